"""Sweeps of arms x seeds on Ray Tune, one MLflow store for every trial, and Population Based Training (PBT) as the
classical rival of an LLM controller.

    mimic-learn sweep sweep.yaml                      # Ray and an MLflow server started on this machine
    mimic-learn sweep sweep.yaml --address auto --tracking-uri http://<mlflow-host>:5000   # an existing cluster
    mimic-learn reproduce paper --executor ray --arms baseline,rules,pbt                   # the same engine

The spec file (YAML) names a task, a regime (or a list of them), the epochs, the seeds and a list of arms; its
format is the docstring of ``spec.py`` (``python -c 'import mimic_learn.experiments.spec as s; help(s)'``).

Execution. Every arm x regime x seed is one Ray Tune trial (a function trainable running ``cells.run_cell``)
with ``--cpus-per-trial`` CPUs and ``--gpus-per-trial`` of a GPU (a fraction such as 0.25 puts four trials on one
GPU); torch in a trial uses as many threads as it has CPUs. Without ``--address``, Ray is started on this machine
(``ray.init(num_cpus=--num-cpus)``, default all cores); with it, the sweep joins that cluster. Tune retries a
failed trial ``--retries`` times (``FailureConfig``); a trial still failing is recorded in MLflow as a FAILED run
with the error in its ``mimic.error`` tag (a run left open by a killed worker is closed the same way), the
sweep goes on, and the report lists the missing cells. Cells already FINISHED in the store are skipped
(``--force`` reruns them), as with ``reproduce``. (ray_trials.py)

MLflow. The sweep is one parent run; every cell is a child run (tag ``mlflow.parentRunId``) in the same
experiment, logged from its trial's process. Without ``--tracking-uri`` the command starts
``mlflow server --host 127.0.0.1`` on a free port over ``sqlite:///mlflow.db`` and trials log over HTTP. A
given ``sqlite:`` store is served the same way while trials run (several processes writing one sqlite file
directly stalled); a server URL is used as is, and a cluster (``--address``) needs one every node reaches.
(server.py)

PBT. A ``pbt`` arm's cell is one Tune experiment of its own: ``population`` members start from lr / dropout /
weight decay drawn from the given ranges (log-uniform, uniform, log-uniform) with the cell's seed (same data
subset and initial weights as every other arm), train one epoch per ``tune.report``, and every
``perturbation_interval`` epochs the bottom quarter copies a top-quarter member's checkpoint (``Trainer.checkpoint``
/ ``restore``) and perturbs its hyperparameters (x1.2 / x0.8, or a resample). The cell's MLflow run is the member
with the best final validation accuracy, with its full lineage (per-epoch metrics of the weights it ended with,
``pbt_lineage.json``) and the whole population (``pbt_population.json``). Compute: a PBT cell costs
``population`` trials; reports say so. (pbt.py)

Shared model endpoint for LLM controllers. Trials must not each load a real model: serve it once per node with
an OpenAI-compatible server (vLLM, llama.cpp's ``llama-server``, Ollama) and name it in the arms as
``openai-compatible:<model>@http://127.0.0.1:<port>/v1``; every trial on the node sends its decisions there.
Hosted providers (``openai:gpt-4o``) are shared endpoints already. The embedded ``local`` controller is kept
in-process, loaded once per Ray worker process (trials reuse their worker; measured here: 0.4 s, +214 MB),
because its tool calls come from constrained decoding that an OpenAI-style endpoint does not offer. On this
2-core machine one llama.cpp server (2 slots) answered decision-sized requests at 1.18/s for one client and
1.25/s for two: a served CPU model is no faster than per-worker copies, it saves memory (and, for real models,
load time and the GPU). ``python benchmarks/sweep_scaling.py --endpoint`` measures it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..tracking.tags import MISSING_CELLS, ROLE, ROLE_PARENT, SWEEP
from .arms import Arm
from .cells import collect, finished_cells, missing_cells
from .ray_cluster import TrialResources, start_ray
from .ray_trials import run_cells_on_ray
from .report import arm_row_cells, missing_section, pbt_compute_note, plot_curves
from .server import absolute_tracking_uri
from .spec import SweepSpec
from .stats import fmt_mean_sd


def sweep_arm_row(arm: Arm, seeds: dict[int, dict] | None, base_test: dict[int, float], base: str) -> str:
    """One arm's row of a sweep report's regime table."""
    controller = f"PBT x{arm.population}" if arm.population else (arm.controller or "none")
    if not seeds:
        return f"| {arm.name} | `{controller}` | 0 | — | — | — | — | — | — | — |"
    col = lambda k: [c[k] for c in seeds.values()]  # noqa: E731
    shared = arm_row_cells(arm, seeds, base_test, base, reference="(reference)")
    row = [
        arm.name,
        f"`{controller}`",
        str(len(seeds)),
        fmt_mean_sd(col("final_val")),
        fmt_mean_sd(col("best_val")),
        fmt_mean_sd(col("test")),
        shared["delta"],
        shared["tool_use"],
        shared["fallbacks"],
        shared["knobs"],
    ]
    return "| " + " | ".join(row) + " |"


def write_sweep_report(
    spec: SweepSpec, data: dict, arms: list[Arm], missing: dict[str, str], header: list[str], out: Path
) -> Path:
    """Markdown: per regime, one row per arm (mean ± std over seeds, paired Δ test vs the first arm, tool use)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# Sweep `{spec.name}`", "", *header, ""]
    if any(a.population for a in arms):
        lines += [pbt_compute_note(arms, data), ""]
    base = arms[0].name
    for regime in spec.regimes:
        cells = data.get(regime, {})
        lines += [f"## Regime {regime} ({spec.epochs} epochs, task {spec.task})", ""]
        if not cells:
            lines += ["No finished cells.", ""]
            continue
        lines += [
            f"| arm | controller | seeds | final val | best val | test | Δ test vs {base} (95% CI) | tool calls (accepted) | fallbacks | knobs changed |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        base_test = {s: c["test"] for s, c in cells.get(base, {}).items()}
        lines += [sweep_arm_row(arm, cells.get(arm.name), base_test, base) for arm in arms]
        plot = plot_curves(data, regime, out.parent / out.stem)
        lines += ["", f"![validation accuracy, regime {regime}]({plot.relative_to(out.parent)})", ""]
    lines += missing_section(missing)
    out.write_text("\n".join(lines) + "\n")
    return out


@dataclass
class SweepOutcome:
    parent_run_id: str
    ran: list[str]
    skipped: list[str]
    failed: dict[str, str]
    missing: dict[str, str]
    report: Path


def _log_sweep(spec: SweepSpec, resources: TrialResources, address: str | None) -> None:
    """The sweep's tags, parameters and spec on the active (parent) run."""
    import mlflow

    from .. import tracking

    mlflow.set_tags(tracking.version_tags() | {ROLE: ROLE_PARENT, SWEEP: spec.name})
    mlflow.log_params(
        {
            "task": spec.task,
            "regimes": ",".join(spec.regimes),
            "epochs": str(spec.epochs),
            "seeds": ",".join(map(str, spec.seeds)),
            "arms": ",".join(a.name for a in spec.arms),
            "cpus_per_trial": str(resources.cpus),
            "gpus_per_trial": str(resources.gpus),
            "ray_address": address or "local",
        }
    )
    mlflow.log_dict(spec.model_dump(mode="json", by_alias=True), "sweep.yaml")


def run_sweep(
    spec: SweepSpec,
    base_dir: Path,
    tracking_uri: str,
    mlflow_experiment: str | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    resources: TrialResources | None = None,
    retries: int = 1,
    force: bool = False,
    out: Path | None = None,
    storage_path: str | None = None,
    command: str = "",
    echo: Callable[[str], None] = print,
) -> SweepOutcome:
    """Every missing cell of ``spec`` as a Ray Tune trial under one MLflow parent run, then the report."""
    import mlflow

    from .. import tracking

    resources = resources or TrialResources()
    experiment = mlflow_experiment or f"mimic-sweep-{spec.name}"
    tracking.setup(absolute_tracking_uri(tracking_uri), experiment)
    state_dir = Path(".mimic/sweeps").resolve() / spec.name
    cells = spec.cells(base_dir, max(1, int(resources.cpus)), state_dir)
    done = finished_cells(spec.name)
    pending = [c for c in cells if force or c.tag not in done]
    skipped = [c.tag for c in cells if not force and c.tag in done]
    for tag in skipped:
        echo(f"skip {tag} (finished in run {done[tag].info.run_id[:8]})")
    started = start_ray(address, num_cpus) if pending else False
    start = time.perf_counter()
    try:
        if pending:
            import ray

            total = ray.cluster_resources()
            echo(
                f"sweep {spec.name}: {len(pending)} trials on Ray ({total.get('CPU', 0):.0f} CPUs, "
                f"{total.get('GPU', 0):.0f} GPUs; {resources.cpus:g} CPU / {resources.gpus:g} GPU per trial)"
            )
        with mlflow.start_run(run_name=f"sweep {spec.name}") as parent:
            _log_sweep(spec, resources, address)
            failed = run_cells_on_ray(pending, resources, retries, storage_path, echo) if pending else {}
            wall = time.perf_counter() - start
            finished = finished_cells(spec.name)
            data = collect(finished, spec.name, spec.regimes, spec.arms)
            missing = missing_cells(spec.name, spec.regimes, spec.arms, spec.seeds, finished)
            header = [
                f"Command: `{command}`" if command else "",
                "",
                f"Ray: {'cluster ' + address if address else 'started on this machine'}; {resources.cpus:g} CPU and "
                f"{resources.gpus:g} GPU per trial. Wall time of this sitting: {wall / 60:.1f} min "
                f"({len(pending)} trials run, {len(skipped)} cells reused from the MLflow store, {len(failed)} failed).",
                "",
                f"MLflow: parent run `{parent.info.run_id}`, experiment `{experiment}`.",
            ]
            report = write_sweep_report(
                spec, data, spec.arms, missing, header, out or Path(f"docs/results/{spec.name}.md")
            )
            mlflow.log_artifact(str(report), artifact_path="report")
            mlflow.set_tag(MISSING_CELLS, str(len(missing)))
    finally:
        if started:
            import ray

            ray.shutdown()
    return SweepOutcome(parent.info.run_id, [c.tag for c in pending], skipped, failed, missing, report)
