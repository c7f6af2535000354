"""Graph overhead per epoch decision (everything except model latency), MLflow tracking off and on.

    python benchmarks/agent_overhead.py [--decisions 30]

Builds the graph the CLI builds (AgentRunner: rules/scripted providers, sqlite checkpointer, log_only
reflection, full prompt) on digits, runs one epoch, then times N graph invocations with a scripted model
(two tool calls per decision, then a final answer). The model's own time (decide_seconds) is subtracted.
Tracked: the same inside an MLflow run with ``mlflow.langchain.autolog()`` on a sqlite store, with the
per-epoch metrics logging the tracker does. Last line: ``overhead_ms <off> tracked_ms <on>``.
Targets: <= 50 ms off, <= 150 ms on.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml


def build_runner(tmp: Path):
    from mimic_learn.graphs.runner import AgentRunner, RunSpec
    from mimic_learn.training import TrainConfig

    script = tmp / "script.yaml"
    calls = [
        {"name": "set_lr", "args": {"lr": 0.001, "reason": "hold"}},
        {"name": "inspect_grad_norms", "args": {}},
    ]
    script.write_text(yaml.safe_dump({"decisions": [{"epoch": 1, "tool_calls": calls}]}))
    spec = RunSpec(
        train=TrainConfig(task="digits", epochs=50, num_threads=2),
        controller=f"scripted:{script}",
        state_db=str(tmp / "g.sqlite"),
    )
    runner = AgentRunner(spec)
    runner.trainer.run_epoch()
    return runner


def time_decisions(runner, n: int, on_each=None) -> list[float]:
    from mimic_learn.graphs.runner import EpochOutcome, agent_report

    report = runner.trainer.history[-1]
    payload = {"epoch": 1, "report": agent_report(runner.trainer, report, 50)}
    out = []
    for _ in range(n):
        start = time.perf_counter()
        state = runner.invoke_graph(payload)
        if on_each is not None:
            on_each(EpochOutcome(report, state["decision"], state))
        total = time.perf_counter() - start
        assert state["tool_calls_used"] == 2, state
        out.append((total - state["decide_seconds"]) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decisions", type=int, default=30)
    args = parser.parse_args()
    import mlflow
    import torch

    from mimic_learn import tracking

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        runner = build_runner(tmp)
        time_decisions(runner, 3)  # warm-up
        off = time_decisions(runner, args.decisions)

        tracking.setup(f"sqlite:///{tmp / 'mlflow.db'}", "overhead")
        mlflow.langchain.autolog(silent=True)
        tracker = tracking.MlflowTracker(arm="bench", log_model=False)
        with mlflow.start_run(run_name="bench"):
            runner.observers.append(tracker)
            time_decisions(runner, 3, on_each=lambda o: tracker.on_epoch(runner, o))
            on = time_decisions(runner, args.decisions, on_each=lambda o: tracker.on_epoch(runner, o))
        mlflow.flush_trace_async_logging()  # before the temporary store disappears
        mlflow.langchain.autolog(disable=True)
        runner.close()

    med_off, med_on = statistics.median(off), statistics.median(on)
    print(
        f"graph overhead per decision, {args.decisions} decisions, scripted model (2 tool calls), digits trainer"
    )
    print(f"machine: {torch.get_num_threads()} torch threads, python {sys.version.split()[0]}")
    print(
        f"tracking off: median {med_off:.1f} ms (p90 {sorted(off)[int(0.9 * len(off))]:.1f} ms)   target <= 50 ms"
    )
    print(
        f"tracking on : median {med_on:.1f} ms (p90 {sorted(on)[int(0.9 * len(on))]:.1f} ms)   target <= 150 ms"
    )
    print(f"overhead_ms {med_off:.1f} tracked_ms {med_on:.1f}")


if __name__ == "__main__":
    main()
