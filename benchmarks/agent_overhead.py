"""Graph overhead per epoch decision (everything except the model's own time), MLflow tracking off and on.

    python benchmarks/agent_overhead.py [--decisions 30]

Builds the graph the CLI builds for an LLM provider (AgentRunner with a chat model object: retries, the
``rules`` fallback, sqlite checkpointer, log_only reflection, full prompt) on digits, trains one epoch, then times
N decisions. The chat model is a fake one that times itself inside ``_generate``; only that time is subtracted,
so everything else the user waits for counts: building the report, the prompt, the graph's nodes, the tools,
the commit, LangChain callbacks (MLflow's tracing handler included) and the tracker's per-epoch logging.
Every decision changes something: the model sets lr to 0.0012 when it is 0.001 and back (then inspects the
gradient norms), so each commit really applies a change.

Tracked: the same inside an MLflow run with ``mlflow.langchain.autolog()`` on a sqlite store and the
tracker's per-epoch metrics. Metrics and traces are written asynchronously, so after the N decisions the script
times the flush that writes them (``flush_async_logging`` + ``flush_trace_async_logging``) and adds it,
divided by N, to every decision.

It first prints the old way once (issue 16: a scripted call that set lr to its current value, so every decision
was a no-op; ``decide_seconds`` subtracted, which includes the tracing callbacks; no flush), then the new way.
Last line: ``overhead_ms <off> tracked_ms <on>`` (new way, medians). Targets: <= 50 ms off, <= 150 ms on.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult

LR_A, LR_B = 0.001, 0.0012  # digits' default lr, and a value inside its trust region


class SelfTimedModel(BaseChatModel):
    """A chat model whose answer costs nothing: set lr to the other of LR_A / LR_B, inspect the gradient norms,
    then finish. It records how long each ``_generate`` took (the model time the benchmark subtracts)."""

    seconds: list[float] = []
    decisions: int = 0

    @property
    def _llm_type(self) -> str:
        return "bench-self-timed"

    def bind_tools(self, tools: Any, **kwargs: Any):
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        from mimic_learn.agents.protocol import decision_context, tool_call

        start = time.perf_counter()
        _, turn, _ = decision_context(messages)
        if turn == 0:
            # The report's lr is the epoch's (the same epoch is replayed), so the model keeps its own count:
            # LR_B, LR_A, LR_B, ... starting from the trainer's LR_A, so every decision changes the lr.
            lr = LR_B if self.decisions % 2 == 0 else LR_A
            self.decisions += 1
            calls = [
                tool_call("set_lr", {"lr": lr, "reason": "benchmark: alternate the learning rate"}),
                tool_call("inspect_grad_norms", {}),
            ]
            message = AIMessage(content="", tool_calls=calls)
        else:
            message = AIMessage(content="done")
        result = ChatResult(generations=[ChatGeneration(message=message)])
        self.seconds.append(time.perf_counter() - start)
        return result


def build_runner(tmp: Path, old_way: bool):
    from mimic_learn.agents.providers import ProviderOptions
    from mimic_learn.graphs.runner import AgentRunner, RunSpec
    from mimic_learn.training import TrainConfig

    if old_way:
        script = tmp / "script.yaml"
        calls = [
            {"name": "set_lr", "args": {"lr": 0.001, "reason": "hold"}},
            {"name": "inspect_grad_norms", "args": {}},
        ]
        script.write_text(yaml.safe_dump({"decisions": [{"epoch": 1, "tool_calls": calls}]}))
        controller, model = f"scripted:{script}", None
    else:
        controller, model = "bench-self-timed", SelfTimedModel()
    spec = RunSpec(
        train=TrainConfig(task="digits", epochs=50, num_threads=2),
        controller=controller,
        state_db=str(tmp / f"g-{'old' if old_way else 'new'}.sqlite"),
        provider=ProviderOptions(retry_wait=False),
    )
    runner = AgentRunner(spec, model=model)
    runner.trainer.run_epoch()
    return runner


def time_old(runner, n: int, on_each=None) -> list[float]:
    """The old way, unchanged: one fixed report, total minus ``decide_seconds``, no-op decisions."""
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


def time_new(runner, n: int, on_each=None) -> list[float]:
    """The new way: the report is built per decision, only the model's own time is subtracted, and every
    decision must have applied its lr change."""
    from mimic_learn.graphs.runner import EpochOutcome, agent_report

    model: SelfTimedModel = runner.model
    report = runner.trainer.history[-1]
    out = []
    for _ in range(n):
        before_lr, model_calls = runner.trainer.lr, len(model.seconds)
        start = time.perf_counter()
        payload = {"epoch": 1, "report": agent_report(runner.trainer, report, 50)}
        state = runner.invoke_graph(payload)
        if on_each is not None:
            on_each(EpochOutcome(report, state["decision"], state))
        total = time.perf_counter() - start
        model_s = sum(model.seconds[model_calls:])
        changes = state["decision"]["changes"]
        assert [c["key"] for c in changes] == ["lr"] and runner.trainer.lr != before_lr, state["decision"]
        assert state["tool_calls_used"] == 2 and not state["fallbacks"], state
        out.append((total - model_s) * 1000)
    return out


def measure(old_way: bool, n: int) -> tuple[list[float], list[float], float]:
    """(untracked ms per decision, tracked ms per decision, flush ms after the tracked decisions)."""
    import mlflow

    from mimic_learn import tracking

    timer = time_old if old_way else time_new
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        runner = build_runner(tmp, old_way)
        timer(runner, 3)  # warm-up
        off = timer(runner, n)

        tracking.setup(f"sqlite:///{tmp / 'mlflow.db'}", f"overhead-{'old' if old_way else 'new'}")
        mlflow.langchain.autolog(silent=True)
        tracker = tracking.MlflowTracker(arm="bench", log_model=False)
        with mlflow.start_run(run_name="bench"):
            runner.observers.append(tracker)
            timer(runner, 3, on_each=lambda o: tracker.on_epoch(runner, o))
            mlflow.flush_async_logging()
            mlflow.flush_trace_async_logging()  # the warm-up's writes are not charged to the timed decisions
            on = timer(runner, n, on_each=lambda o: tracker.on_epoch(runner, o))
            start = time.perf_counter()
            mlflow.flush_async_logging()
            mlflow.flush_trace_async_logging()
            flush_ms = (time.perf_counter() - start) * 1000
        mlflow.langchain.autolog(disable=True)
        runner.close()
    return off, on, flush_ms


def p90(values: list[float]) -> float:
    return sorted(values)[int(0.9 * len(values))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decisions", type=int, default=30)
    args = parser.parse_args()
    import torch

    n = args.decisions
    load = os.getloadavg()
    print(f"graph overhead per decision, {n} decisions per side, digits trainer, 2 tool calls per decision")
    print(
        f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
        f"{torch.get_num_threads()} torch threads, python {sys.version.split()[0]}"
    )

    off, on, flush_ms = measure(old_way=True, n=n)
    print("old way (no-op scripted decisions, decide_seconds subtracted, async writes not flushed):")
    print(f"  tracking off: median {statistics.median(off):.1f} ms (p90 {p90(off):.1f})")
    print(f"  tracking on : median {statistics.median(on):.1f} ms (p90 {p90(on):.1f})")
    print(f"  (the flush it left out: {flush_ms:.1f} ms for {n} decisions)")

    off, on, flush_ms = measure(old_way=False, n=n)
    on_total = [v + flush_ms / n for v in on]
    med_off, med_on = statistics.median(off), statistics.median(on_total)
    print("new way (every decision changes lr; only the model's own time subtracted; flush amortised):")
    print(f"  tracking off: median {med_off:.1f} ms (p90 {p90(off):.1f})   target <= 50 ms")
    print(
        f"  tracking on : median {med_on:.1f} ms (p90 {p90(on_total):.1f}) = {statistics.median(on):.1f} ms "
        f"in the decision + flush {flush_ms:.1f} ms / {n}   target <= 150 ms"
    )
    print(f"overhead_ms {med_off:.1f} tracked_ms {med_on:.1f}")


if __name__ == "__main__":
    main()
