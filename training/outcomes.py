"""The outcome record: what a controller saw at a decision boundary, one action, and what that action caused.

One record per counterfactual fork (``--reflection counterfactual``: the real decision vs not acting) and one per
oracle trial (``--controller oracle``: each candidate action vs keep). ``AgentRunner`` collects them, the
MLflow tracker stores them as the child run's ``outcomes.jsonl`` artifact, and ``mimic-learn export-outcomes``
gathers them from runs into one JSON-lines file. The outcome bank and controller training read the same
schema (documented field by field in ``docs/reference/outcomes.md``).

Versioning: ``schema_version`` is bumped on any change a reader must know about; ``from_dict`` refuses a
record from a newer schema instead of guessing. Plain data only (no torch, no LangChain), so any layer can
import it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Literal

SCHEMA_VERSION = 1
Kind = Literal["fork", "oracle_trial"]


@dataclass
class BranchOutcome:
    """A branch's numbers after ``horizon`` epochs (its last epoch)."""

    epoch: int  # the epoch these numbers are from (decision epoch + horizon)
    monitor: float | None  # the monitored number (``OutcomeRecord.monitor``)
    val_loss: float | None
    train_loss: float | None
    val_acc: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # a user loop's own numbers
    real: bool = False  # True: this branch is the run that went on (not a shadow)


@dataclass
class OutcomeRecord:
    """One action at one boundary and its measured outcome against not acting. See the module docstring."""

    kind: Kind  # "fork": the controller's real decision; "oracle_trial": one candidate the oracle tried
    epoch: int  # the boundary: the epoch that had just ended when the action was taken
    horizon: int  # epochs both branches trained after the boundary
    monitor: str  # the monitored number's name, e.g. "val_acc"
    mode: str  # "max": higher monitor is better; "min": lower is better
    action: dict  # {"name": candidate name or "decision", "tool_calls": [{"name", "args"}], "changes": [...]}
    with_action: BranchOutcome  # the branch that took the action
    without_action: BranchOutcome  # the branch that did not (same start state, same batches)
    effect: float | None  # monitor(with) − monitor(without), in the monitor's direction: > 0 means it helped
    val_loss_effect: float | None  # val_loss(without) − val_loss(with): > 0 means lower validation loss
    report: dict  # the structured numbers the controller saw (the graph's report, history included)
    rendered_report: str  # the prompt text the controller saw for this report
    config: dict  # the run's TrainConfig (task, regime, seed, ...) as strings: enough to replay the state
    thread_id: str = ""
    compute_epochs: int = 0  # extra (shadow) epochs this record cost
    chosen: bool | None = None  # oracle trials: whether this candidate was committed; forks: None
    note: str = ""  # e.g. "short-term (1 epoch)"
    source_run_id: str | None = None  # the MLflow child run it came from (filled by export-outcomes)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        return _finite_or_none(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=str, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict) -> OutcomeRecord:
        version = data.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ValueError(
                f"outcome record schema_version={version!r} is not readable by this version of mimic-learn "
                f"(reads 1..{SCHEMA_VERSION}); upgrade mimic-learn"
            )
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["with_action"] = BranchOutcome(**values["with_action"])
        values["without_action"] = BranchOutcome(**values["without_action"])
        return cls(**values)

    @classmethod
    def from_json(cls, line: str) -> OutcomeRecord:
        return cls.from_dict(json.loads(line))


def _finite_or_none(value):
    """NaN and infinities become None (JSON has no NaN); ``effect`` None plus a non-finite branch says it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def write_jsonl(records: list[OutcomeRecord], path) -> int:
    from pathlib import Path

    lines = [r.to_json() for r in records]
    Path(path).write_text("".join(line + "\n" for line in lines))
    return len(lines)


def read_jsonl(path) -> list[OutcomeRecord]:
    from pathlib import Path

    return [OutcomeRecord.from_json(line) for line in Path(path).read_text().splitlines() if line.strip()]
