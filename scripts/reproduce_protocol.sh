#!/usr/bin/env bash
# The paper experiment's full protocol (issue 23) in one command: >= 10 seeds at regimes 10/100/600, 3 at
# 6000/full, the published arms plus cosine, random, the two oracle references and PBT, from the published
# start and the three mis-tuned starts; then one report with its per-cell file.
#
#   scripts/reproduce_protocol.sh <mnist data dir> [controller] [extra reproduce options...]
#   DRY=1 scripts/reproduce_protocol.sh ../shared/data local        # print the plans only (cells, time, tokens)
#
# Cells already finished in the store are skipped, so the script resumes where it stopped. It needs Ray
# (pip install "mimic-learn[ray]"): every cell is a Ray Tune trial, one torch thread each, all cores.
set -euo pipefail
DATA=${1:?usage: $0 <mnist data dir> [controller] [reproduce options...]}
CONTROLLER=${2:-local}
shift $(( $# >= 2 ? 2 : 1 ))
STORE=${STORE:-sqlite:///reproduce_protocol.db}
ARMS=baseline,llm_paper_log_only,llm_paper_memory,llm_paper_revert,rules,reduce_on_plateau,cosine,random,oracle_end,oracle_1,pbt
STARTS=published,lr_x30,lr_div100,dropout_0.7
COMMON=(--arms "$ARMS" --start "$STARTS" --controller "$CONTROLLER" --data-dir "$DATA" --tracking-uri "$STORE"
        --mlflow-experiment mimic-reproduce-protocol --out docs/results/paper_protocol.md "$@")
if [[ -n "${DRY:-}" ]]; then
  mimic-learn reproduce paper --dry-run --regimes 10,100,600 --seeds 0,1,2,3,4,5,6,7,8,9 "${COMMON[@]}"
  mimic-learn reproduce paper --dry-run --regimes 6000,full --seeds 0,1,2 "${COMMON[@]}"
  exit 0
fi
RAY=(--executor ray --cpus-per-trial 1)
mimic-learn reproduce paper --regimes 10,100,600 --seeds 0,1,2,3,4,5,6,7,8,9 "${RAY[@]}" "${COMMON[@]}"
mimic-learn reproduce paper --regimes 6000,full --seeds 0,1,2 "${RAY[@]}" "${COMMON[@]}"
# One report over every regime (seeds 3-9 at 6000/full show as "not run"), and its per-cell file
# docs/results/paper_protocol_cells.csv, from which `--from-cells` rebuilds it without the store.
mimic-learn reproduce paper --report-only --regimes 10,100,600,6000,full --seeds 0,1,2,3,4,5,6,7,8,9 "${COMMON[@]}"
