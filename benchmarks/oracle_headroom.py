"""Does per-epoch control have anything to gain on this task? Baseline vs the oracle controller, paired by seed.

    python benchmarks/oracle_headroom.py                                   # the full run (hours on a CPU)
    python benchmarks/oracle_headroom.py --regimes 100 --epochs 8 --seeds 0,1,2 --val-size 1000   # reduced

Run this before spending LLM calls on a task. The oracle (``--controller oracle:<h>``) tries every candidate
action (tools/candidates.py: keep, lr x0.1/x0.3/x3, dropout +-0.1, weight decay x10 / to 0, an alpha-blended
gradient delta, rollback) in a shadow branch for h epochs at every epoch boundary and commits the best by
*validation* accuracy (never test). It is a greedy h-step reference, not an upper bound: a controller that
reads the same numbers can do better or worse. If even the oracle does not beat the fixed baseline beyond the
interval, a controller has little to gain here; if it does, the headroom is what a controller could win.

What it runs, per seed (same data subset, initial weights and batch order in both arms):
    baseline   the fixed schedule (the paper's: Adam, lr 1e-3, dropout 0.2, batch 64), no decisions
    oracle:<h> the same run, the oracle deciding at every boundary (h = end: to the end of the run)
on MNIST regimes 100 and 600 (PaperCNN, 30 epochs) and on sklearn digits (its MLP, 20 epochs), >= 5 seeds.
Printed: per task and horizon the mean test accuracy of both arms, the paired difference (oracle − baseline,
percentage points, 95% t interval over seeds), and the compute ratio (epochs trained including shadow
branches / the baseline's epochs). Last line, for MNIST regime 100 (or the first task run when 100 is not):
    headroom_pt <oracle − baseline, points> ci <95% half-width> compute_ratio <x> task <task/regime> horizon <h>

Cost: oracle:end at boundary e of T trains candidates x (T − e) shadow epochs: about candidates x T²/2 epochs
per run (MNIST-100, 30 epochs, 8 candidates: ~3500 epochs per seed). Use --epochs/--seeds/--val-size/--regimes
to size it; results are appended to --out with the command that made them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path


def task_config(task: str, regime: str, seed: int, args):
    from mimic_learn.training import TrainConfig, parse_regime

    if task == "digits":
        return TrainConfig(
            task="digits", epochs=args.digits_epochs or args.epochs or 20, lr=1e-3, dropout=0.2, seed=seed,
            num_threads=args.threads, val_size=args.digits_val_size,
        )  # fmt: skip
    return TrainConfig(
        task="mnist", regime=parse_regime(regime), epochs=args.epochs or 30, optimizer="adam", lr=1e-3,
        dropout=0.2, batch_size=64, seed=seed, data_dir=args.data_dir, num_threads=args.threads,
        val_size=args.val_size,
    )  # fmt: skip


def run_baseline(cfg) -> dict:
    from mimic_learn.training import Trainer

    start = time.perf_counter()
    trainer = Trainer.from_config(cfg)
    for _ in range(cfg.epochs):
        trainer.run_epoch()
    return {"test": trainer.test().acc, "epochs": cfg.epochs, "seconds": time.perf_counter() - start}


def run_oracle(cfg, horizon: str, tmp: Path) -> dict:
    from mimic_learn.graphs.graph import AgentConfig
    from mimic_learn.graphs.runner import AgentRunner, RunSpec

    start = time.perf_counter()
    spec = RunSpec(
        train=cfg,
        controller=f"oracle:{horizon}",
        agent=AgentConfig(reflection="log_only"),
        state_db=str(tmp / f"oracle-{cfg.task}-{cfg.regime}-{cfg.seed}-{horizon}.sqlite"),
    )
    runner = AgentRunner(spec)
    try:
        result = runner.run()
    finally:
        runner.close()
    chosen = [o.oracle["chosen"] for o in result.epochs if o.oracle]
    return {
        "test": result.test.acc,
        "epochs": cfg.epochs + runner.shadow_epochs,
        "seconds": time.perf_counter() - start,
        "chosen": chosen,
    }


def paired(diffs: list[float]) -> tuple[float, float]:
    """Mean of the paired differences and the half-width of its 95% t interval (experiments.stats)."""
    from mimic_learn.experiments import paired_diff

    diff, half, _ = paired_diff(dict(enumerate(diffs)), dict.fromkeys(range(len(diffs)), 0.0))
    return diff, half


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--regimes", default="100,600", help="MNIST regimes ('' for none)")
    parser.add_argument(
        "--digits", action=argparse.BooleanOptionalAction, default=True, help="also run digits"
    )
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--epochs", type=int, default=None, help="MNIST epochs (default 30)")
    parser.add_argument(
        "--digits-epochs", type=int, default=None, help="digits epochs (default --epochs or 20)"
    )
    parser.add_argument("--horizons", default="end,1", help="oracle horizons; the first is the headline")
    parser.add_argument("--val-size", type=int, default=None, help="MNIST validation images (default 5000)")
    parser.add_argument(
        "--digits-val-size", type=int, default=None, help="digits validation images (default 300)"
    )
    parser.add_argument("--data-dir", default="data", help="folder with MNIST/raw")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--out", default="oracle_headroom_results.jsonl", help="append results here ('' : no)"
    )
    return parser


def run_case(task: str, regime: str, seeds: list[int], horizons: list[str], args, tmp: Path) -> list[dict]:
    """Baseline and every oracle horizon on one task/regime over ``seeds``: one result row per horizon."""
    rows = []
    label = f"{task}/{regime}" if task == "mnist" else "digits"
    base = {}
    for seed in seeds:
        base[seed] = run_baseline(task_config(task, regime, seed, args))
        print(f"{label} seed {seed} baseline test {base[seed]['test']:.4f} ({base[seed]['seconds']:.1f}s)")
    for horizon in horizons:
        arm = {}
        for seed in seeds:
            arm[seed] = run_oracle(task_config(task, regime, seed, args), horizon, tmp)
            print(
                f"{label} seed {seed} oracle:{horizon} test {arm[seed]['test']:.4f} "
                f"({arm[seed]['seconds']:.1f}s, {arm[seed]['epochs']} epochs; chose "
                f"{', '.join(arm[seed]['chosen'])})",
                flush=True,
            )
        diff, half = paired([100 * (arm[s]["test"] - base[s]["test"]) for s in seeds])
        ratio = statistics.fmean(arm[s]["epochs"] / base[s]["epochs"] for s in seeds)
        rows.append(
            {
                "task": label, "horizon": horizon, "seeds": seeds,
                "epochs": task_config(task, regime, 0, args).epochs,
                "baseline_test": statistics.fmean(base[s]["test"] for s in seeds),
                "oracle_test": statistics.fmean(arm[s]["test"] for s in seeds),
                "headroom_pt": diff, "ci": half, "compute_ratio": ratio,
                "per_seed_pt": [100 * (arm[s]["test"] - base[s]["test"]) for s in seeds],
                "seconds": sum(arm[s]["seconds"] + base[s]["seconds"] for s in seeds),
            }
        )  # fmt: skip
    return rows


def print_table(rows: list[dict]) -> None:
    print()
    print(
        f"{'task':<12} {'arm':<11} {'epochs':>6} {'baseline':>9} {'oracle':>8} {'headroom pt (95% CI)':>22} {'compute':>8}"
    )
    for r in rows:
        print(
            f"{r['task']:<12} {'oracle:' + r['horizon']:<11} {r['epochs']:>6} {r['baseline_test']:>9.4f} "
            f"{r['oracle_test']:>8.4f} {r['headroom_pt']:>+13.2f} ± {r['ci']:<6.2f} {r['compute_ratio']:>7.1f}x"
        )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    horizons = [h for h in args.horizons.split(",") if h]
    cases = [("mnist", r) for r in args.regimes.split(",") if r] + (
        [("digits", "full")] if args.digits else []
    )
    if not cases or not seeds or not horizons:
        parser.error("nothing to run: give --regimes and/or --digits, --seeds and --horizons")
    command = "python benchmarks/oracle_headroom.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    print(f"# {command}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task, regime in cases:
            rows += run_case(task, regime, seeds, horizons, args, Path(tmp))
    print_table(rows)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(json.dumps({"command": command, "rows": rows}) + "\n")
    headline = next((r for r in rows if r["task"] == "mnist/100"), rows[0])
    print(
        f"headroom_pt {headline['headroom_pt']:.2f} ci {headline['ci']:.2f} compute_ratio "
        f"{headline['compute_ratio']:.1f} task {headline['task']} horizon {headline['horizon']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
