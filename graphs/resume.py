"""The runner's resume file: what a killed run continues from (``mimic-learn resume``).

With ``train.checkpoint_dir`` set, each completed epoch (trained, decided, observed) leaves
``resume_<epoch>.pt`` there (the newest ``RESUME_KEEP`` are kept): the trainer's snapshot after the decision
(``checkpoints.portable_snapshot``: its checkpoint, staged deltas, unreported events, retention) and the run's
own state (``AgentRunner.save_resume_state``: outcomes so far, the guard's count, outcome records, shadow-epoch
counts, the graph checkpoint id). ``load`` puts the trainer back and returns the run's state; if the graph had
already saved a later decision (a kill between the two writes), the runner forks from the recorded checkpoint.

Not restored: a gradient-dependent weight delta staged by the last decision (a function, not data).
"""

from __future__ import annotations

from pathlib import Path

from ..training import checkpoints
from ..training.steerable import Steerable

RESUME_KEEP = 2  # resume_<epoch>.pt files kept in the checkpoint folder
_SNAPSHOT_KEYS = ("deltas", "pending_events", "pre_decision", "last_good")


def resume_files(folder: Path | None) -> list[Path]:
    return checkpoints.files(folder, checkpoints.RESUME_FILES)


def save(folder: Path, trainer: Steerable, run_state: dict) -> Path:
    """Write ``resume_<epoch>.pt``: the trainer's portable snapshot and ``run_state``; keep the newest few."""
    snap = checkpoints.portable_snapshot(trainer.snapshot())  # after the decision: its knobs are in
    state = {
        "epoch": trainer.epoch,
        "trainer": snap["ckpt"],
        **{k: snap[k] for k in _SNAPSHOT_KEYS},
        **run_state,
    }
    path = checkpoints.save(checkpoints.resume_file(folder, trainer.epoch), state)
    for old in resume_files(folder)[:-RESUME_KEEP]:
        old.unlink(missing_ok=True)
    return path


def load(folder: Path | None, trainer: Steerable) -> dict | None:
    """Put ``trainer`` back as the newest resume file has it and return the file's state (None: no file)."""
    files = resume_files(folder)
    if not files:
        return None
    state = checkpoints.load(files[-1])
    trainer.restore_snapshot({"ckpt": state["trainer"], **{k: state[k] for k in _SNAPSHOT_KEYS}})
    return state


def outcome_row(outcome) -> dict:
    """An ``EpochOutcome`` as the resume file keeps it (JSON)."""
    state = outcome.state
    return {
        "report": outcome.report.to_dict(),
        "decision": outcome.decision,
        "guard": outcome.guard,
        "guard_rollbacks": outcome.guard_rollbacks,
        # provider usage of the decision (None: the graph did not run at this epoch)
        "tokens": None
        if state is None
        else [int(state.get("tokens_in", 0)), int(state.get("tokens_out", 0))],
    }


def restored_state(saved: dict) -> dict | None:
    """What a resumed run keeps of an earlier epoch's graph state: its provider usage, so the run's token and
    decision totals count the epochs before the interruption (their metrics are already in MLflow)."""
    tokens = saved.get("tokens")
    return None if tokens is None else {"tokens_in": tokens[0], "tokens_out": tokens[1]}
