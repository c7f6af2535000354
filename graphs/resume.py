"""The runner's resume file: what a killed run continues from (``mimic-learn resume``).

With ``train.checkpoint_dir`` set, each completed epoch (trained, decided, observed) leaves
``resume_<epoch>.pt`` there (the newest ``RESUME_KEEP`` are kept): the trainer's snapshot after the decision
(``checkpoints.portable_snapshot``: its checkpoint, staged deltas, unreported events, retention), the outcomes
so far, the guard's count, the outcome records, shadow-epoch counts and the graph checkpoint id.
``load_resume_state`` continues from the newest; if the graph had already saved a later decision (a kill
between the two writes), the next invocation forks from the recorded checkpoint.

Not restored: a gradient-dependent weight delta staged by the last decision (a function, not data).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..training import checkpoints
from ..training.outcomes import OutcomeRecord
from ..training.reports import EpochReport

if TYPE_CHECKING:
    from .runner import AgentRunner, EpochOutcome

RESUME_KEEP = 2  # resume_<epoch>.pt files kept in the checkpoint folder
_SNAPSHOT_KEYS = ("deltas", "pending_events", "pre_decision", "last_good")


def resume_files(folder: Path | None) -> list[Path]:
    return checkpoints.files(folder, checkpoints.RESUME_FILES)


def outcomes_json(outcomes: list[EpochOutcome]) -> str:
    return json.dumps(
        [
            {
                "report": o.report.to_dict(),
                "decision": o.decision,
                "guard": o.guard,
                "guard_rollbacks": o.guard_rollbacks,
                # provider usage of the decision (None: the graph did not run at this epoch)
                "tokens": None
                if o.state is None
                else [int(o.state.get("tokens_in", 0)), int(o.state.get("tokens_out", 0))],
            }
            for o in outcomes
        ],
        default=str,
    )


def outcomes_from_json(text: str) -> list[EpochOutcome]:
    from .runner import EpochOutcome

    return [
        EpochOutcome(
            EpochReport(**o["report"]), o["decision"], restored_state(o), o["guard"], o["guard_rollbacks"]
        )
        for o in json.loads(text)
    ]


def restored_state(saved: dict) -> dict | None:
    """What a resumed run keeps of an earlier epoch's graph state: its provider usage, so the run's token and
    decision totals count the epochs before the interruption (their metrics are already in MLflow)."""
    tokens = saved.get("tokens")
    return None if tokens is None else {"tokens_in": tokens[0], "tokens_out": tokens[1]}


def save_resume_state(runner: AgentRunner) -> Path | None:
    """After a completed epoch (trained, decided, observed): what ``load_resume_state`` continues from."""
    folder = runner.spec.train.resolved_checkpoint_dir()
    if folder is None:
        return None
    for obs in runner.observers:  # what they logged up to here must be durable before this file exists
        hook = getattr(obs, "on_checkpoint", None)
        if hook is not None:
            hook(runner)
    trainer = runner.trainer
    graph_id = None
    if runner.graph is not None:
        graph_id = runner.graph.get_state(runner.graph_config).config["configurable"].get("checkpoint_id")
    snap = checkpoints.portable_snapshot(trainer.snapshot())  # after the decision: its knobs are in
    state = {
        "epoch": trainer.epoch,
        "trainer": snap["ckpt"],
        **{k: snap[k] for k in _SNAPSHOT_KEYS},
        "graph_checkpoint_id": graph_id,
        "guard_rollbacks": runner.guard_rollbacks,
        "outcome_records": [r.to_json() for r in runner.outcome_records],
        "shadow_epochs": {
            "oracle": runner.oracle_epochs,
            "forks": runner.counterfactual.shadow_epochs if runner.counterfactual else 0,
        },
        "outcomes": outcomes_json(runner.outcomes),
    }
    path = checkpoints.save(checkpoints.resume_file(folder, trainer.epoch), state)
    for old in resume_files(folder)[:-RESUME_KEEP]:
        old.unlink(missing_ok=True)
    return path


def load_resume_state(runner: AgentRunner) -> int:
    """Continue ``runner`` from the newest resume file; returns the epoch it resumes after (0: none)."""
    files = resume_files(runner.spec.train.resolved_checkpoint_dir())
    if not files:
        if runner.graph is not None and runner.graph_state():
            runner.checkpointer.delete_thread(runner.thread_id)  # a decision made before any epoch was saved
        return 0
    state = checkpoints.load(files[-1])
    runner.trainer.restore_snapshot({"ckpt": state["trainer"], **{k: state[k] for k in _SNAPSHOT_KEYS}})
    runner.guard_rollbacks = state["guard_rollbacks"]
    runner.outcome_records = [OutcomeRecord.from_json(r) for r in state.get("outcome_records", [])]
    shadow = state.get("shadow_epochs") or {}
    runner.oracle_epochs = shadow.get("oracle", 0)
    if runner.counterfactual is not None:
        runner.counterfactual.shadow_epochs = shadow.get("forks", 0)
    runner.outcomes = outcomes_from_json(state["outcomes"])
    if runner.graph is not None:
        saved = state["graph_checkpoint_id"]
        latest = runner.graph.get_state(runner.graph_config).config["configurable"].get("checkpoint_id")
        if saved is None and latest is not None:
            runner.checkpointer.delete_thread(runner.thread_id)
        elif latest != saved:  # the graph saved a later decision than the trainer: continue from ours
            runner.fork_from = saved
    return state["epoch"]
