"""Arms built from other arms' finished cells: ``constant_policy`` and ``placebo`` (``reproduce --arms ...``).

    mimic-learn reproduce paper --regimes 100 --seeds 0,1,2 --arms baseline,llm_paper_log_only,constant_policy,placebo

* ``constant_policy``: the primary LLM arm's (``PRIMARY_LLM_ARM``: paper ``llm_paper_log_only``, blog ``losses``)
  most frequent accepted call, over every finished cell of that arm in the regime (all seeds in the store),
  applied by a ``constant:<tool>:<args>`` controller at every decision from the first boundary. A call is its
  tool and its arguments without the reason; only calls that act (mutating tools: ``keep_current`` counts, the
  read-only ``inspect_*`` tools do not); a tie goes to the call seen first (cells by seed, then by epoch). The
  controller binds the arm's matched tools, plus the call's tool when the LLM cells used one outside them.
  ``constant_adapter`` is the same for ``llm_adapter`` (the trained adapter): ``--arms llm_adapter,constant_adapter``.
* ``placebo``: the primary LLM arm's controller, prompt and tools, but at each boundary every measured number of
  the report it reads (losses, accuracies, per-class accuracy, gradient norms, the user loop's metrics, the
  same in the history rows) is the baseline arm's (the experiment's first arm: paper ``baseline``, blog
  ``steplr``) at the same epoch in another seed's cell: seed s reads the next seed of the sitting's seed list,
  cyclically (seeds 0,1,2: 0 <- 1, 1 <- 2, 2 <- 0), or seed s+1 when the sitting has one seed. Its knob values
  (lr, dropout, weight decay, alpha) and events are its own, and its calls act on its own trainer. The
  substitution is a ``graphs.runner.ReportView`` (``PlaceboView``); training never sees it. It binds only the
  matched tools (no ``inspect_*`` tool, which would read its own trainer).

Order: ``reproduce`` runs a sitting's other cells first, then these (``prepare``), from what the store holds by
then (this sitting's cells and earlier ones'). A derived cell whose prerequisite is not finished is not run and
the report says why ("needs llm_paper_log_only cells in this regime first", "needs baseline seed 3 first");
nothing is guessed. Each derived cell's run records what it was given: the ``mimic.cell_note`` tag (shown in the
report's notes and the per-cell file's note), the cells it was derived from, and for a placebo which seed's
metrics it read. Arms from a mis-tuned start derive from the same start's arms (``placebo@lr_x30`` reads
``baseline@lr_x30``).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow

from ..tracking.tags import CELL_NOTE, DERIVED_FROM, PLACEBO_SOURCE_RUN, PLACEBO_SOURCE_SEED
from .arms import Arm, default_arms
from .cells import Cell, cell_tag

PRIMARY_LLM_ARM = {"paper": "llm_paper_log_only", "blog": "losses"}
CONSTANT_POLICY = "constant_policy"
# The constant-policy arms and the arm each holds constant (None: the primary LLM arm): constant_adapter is the
# trained adapter's (llm_adapter's) most frequent call, the control that tells "reads the numbers" from "found one
# good setting".
CONSTANT_ARMS: dict[str, str | None] = {CONSTANT_POLICY: None, "constant_adapter": "llm_adapter"}
PLACEBO = "placebo"
DERIVED_ARMS = (*CONSTANT_ARMS, PLACEBO)

# What a placebo reads from the other seed's run: every measured field of an epoch report, and of a history row
MEASURED = ("train_loss", "train_acc", "val_loss", "val_acc", "per_class_val_acc", "grad_norms", "metrics",
            "wall_time")  # fmt: skip
HISTORY_MEASURED = ("train_loss", "val_loss", "train_acc", "val_acc")
HISTORY_KNOBS = ("lr", "dropout")  # a history row's knob values: the placebo's own


def split_name(name: str) -> tuple[str, str]:
    """``placebo@lr_x30`` -> ("placebo", "@lr_x30"); ``placebo`` -> ("placebo", "")."""
    base, at, start = name.partition("@")
    return base, f"{at}{start}"


def is_derived(arm: Arm) -> bool:
    return split_name(arm.name)[0] in DERIVED_ARMS


def source_arm(kind: str, name: str) -> str:
    """The arm a derived arm reads, same start: the primary LLM arm (constant_policy), llm_adapter
    (constant_adapter) or the baseline (placebo)."""
    base, start = split_name(name)
    if base in CONSTANT_ARMS:
        source = CONSTANT_ARMS[base] or PRIMARY_LLM_ARM[kind]
    else:
        source = default_arms(kind)[0].name
    return source + start


def placebo_source_seed(seed: int, seeds: list[int]) -> int:
    """The seed whose baseline metrics seed ``seed``'s placebo reads: the next in ``seeds``, cyclically; s+1 alone."""
    order = list(dict.fromkeys(seeds))
    if len(order) < 2 or seed not in order:
        return seed + 1
    return order[(order.index(seed) + 1) % len(order)]


# ---------------------------------------------------------------------------------------------- constant_policy
@dataclass(frozen=True)
class Action:
    """The derived constant call: its tool and arguments, how often it was made, out of how many, where."""

    tool: str
    args: dict
    count: int
    calls: int  # accepted acting calls counted
    run_ids: tuple[str, ...]  # the cells they came from

    @property
    def text(self) -> str:
        """``set_lr(lr=0.003)``"""
        return f"{self.tool}(" + ", ".join(f"{k}={v!r}" for k, v in self.args.items()) + ")"

    @property
    def controller(self) -> str:
        from ..agents.constant import literal_action

        return literal_action(self.tool, self.args)


def acting_calls(rows: list[dict]) -> list[tuple[str, str]]:
    """The accepted calls of a decisions table that act, as (tool, arguments as sorted JSON without the reason),
    in table order."""
    from ..tools.registry import discover

    tools = discover()
    out = []
    for row in rows:
        tool = row.get("tool") or ""
        if not tool or not row.get("accepted") or not getattr(tools.get(tool), "mutating", False):
            continue
        args = json.loads(row.get("arguments") or "{}") or {}
        args.pop("reason", None)
        out.append((tool, json.dumps(args, sort_keys=True)))
    return out


def most_frequent_action(tables: dict[str, list[dict]]) -> Action | None:
    """The most frequent accepted acting call over decisions tables (run id -> rows, in seed order); a tie goes to
    the call seen first. None when no table has one."""
    calls = [(call, run_id) for run_id, rows in tables.items() for call in acting_calls(rows)]
    if not calls:
        return None
    counts = Counter(call for call, _ in calls)
    best = max(counts.values())
    (tool, args), _ = next((c, r) for c, r in calls if counts[c] == best)
    used = tuple(dict.fromkeys(r for c, r in calls if c == (tool, args)))
    return Action(tool, json.loads(args), best, len(calls), used)


@contextmanager
def quiet_downloads() -> Iterator[None]:
    """No MLflow download progress bars in the middle of reproduce's cell lines."""
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR as BAR

    before = os.environ.get(BAR.name)
    os.environ[BAR.name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(BAR.name, None)
        else:
            os.environ[BAR.name] = before


def decision_table(run_id: str) -> list[dict]:
    """A finished cell's decisions table (``decisions.json``); [] when it made no decision."""
    from ..tracking import load_decisions

    names = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
    if "decisions.json" not in names:
        return []
    with quiet_downloads():
        return load_decisions(run_id)


def cells_of(kind: str, regime: str, arm: str, finished: dict) -> dict[int, mlflow.entities.Run]:
    """The finished cells of ``arm`` in ``regime``, by seed (ascending)."""
    prefix = f"{kind}/{regime}/{arm}/s"
    found = {int(tag.removeprefix(prefix)): run for tag, run in finished.items() if tag.startswith(prefix)}
    return dict(sorted(found.items()))


def derive_action(kind: str, regime: str, arm_name: str, finished: dict) -> Action | str:
    """The constant_policy arm's call in ``regime``, or why there is none."""
    source = source_arm(kind, arm_name)
    runs = cells_of(kind, regime, source, finished)
    if not runs:
        return f"needs {source} cells in this regime first"
    tables = {run.info.run_id: decision_table(run.info.run_id) for run in runs.values()}
    action = most_frequent_action(tables)
    if action is None:
        return f"{source} made no accepted call that acts in this regime ({_cells(len(runs))}): nothing to hold constant"
    return action


def _cells(n: int) -> str:
    return f"{n} cell{'s' if n != 1 else ''}"


def constant_cell(cell: Cell, action: Action, kind: str) -> Cell:
    """``cell`` with the constant controller of ``action`` (its tool bound beside the arm's matched tools)."""
    tools = cell.spec.agent.tools
    extra = tools is not None and action.tool not in tools
    agent = replace(cell.spec.agent, tools=[*tools, action.tool]) if extra else cell.spec.agent
    source = source_arm(kind, cell.arm.name)
    note = (
        f"applied `{action.text}` at every decision: the most frequent accepted call of `{source}` in this "
        f"regime ({action.count} of {action.calls} accepted calls, {_cells(len(action.run_ids))})"
        + (f"; `{action.tool}` bound beside the arm's tools" if extra else "")
    )
    spec = replace(cell.spec, controller=action.controller, agent=agent)
    tags = {CELL_NOTE: note, DERIVED_FROM: ",".join(action.run_ids)[:5000]}
    return replace(cell, spec=spec, tags=cell.tags | tags)


# ---------------------------------------------------------------------------------------------- placebo
@dataclass
class PlaceboView:
    """A ``graphs.runner.ReportView``: the report with every measured number replaced by the source run's at the
    same epoch (``reports``: epoch -> that run's epoch report). Knobs, events and the run length stay."""

    source_seed: int
    source_run_id: str
    reports: dict[int, dict]

    def numbers(self, epoch: int) -> dict:
        if epoch not in self.reports:
            raise ValueError(
                f"placebo: the source run {self.source_run_id} (seed {self.source_seed}) has no epoch {epoch}"
            )
        return self.reports[epoch]

    def history_row(self, row: dict) -> dict:
        """A history row: the epoch and knobs its own, the measured numbers (and a loop's metrics) the source's."""
        other = self.numbers(row["epoch"])
        norms = [
            v for v in (other.get("grad_norms") or {}).values() if isinstance(v, float) and math.isfinite(v)
        ]
        own = {k: row[k] for k in ("epoch", *HISTORY_KNOBS) if k in row}
        measured = {k: other.get(k) for k in HISTORY_MEASURED}
        return own | measured | {"grad_norm": max(norms) if norms else None} | (other.get("metrics") or {})

    def __call__(self, report: dict) -> dict:
        other = self.numbers(report["epoch"])
        seen = dict(report) | {k: other.get(k) for k in MEASURED if k in other}
        seen["history"] = [self.history_row(row) for row in report.get("history") or []]
        return seen


def epoch_reports(run_id: str) -> dict[int, dict]:
    """A finished cell's epoch reports (its ``history.json`` artifact), by epoch; {} when it has none."""
    client = mlflow.MlflowClient()
    if "history.json" not in {a.path for a in client.list_artifacts(run_id)}:
        return {}
    with tempfile.TemporaryDirectory() as tmp, quiet_downloads():
        reports = json.loads(Path(client.download_artifacts(run_id, "history.json", tmp)).read_text())
    return {int(r["epoch"]): r for r in reports}


def resume_view(run_tags: dict[str, str]) -> PlaceboView | None:
    """The view a killed cell ran with, rebuilt from its tags for ``mimic-learn resume`` (a placebo cell: its
    source run's epoch reports); None for a cell that read its own numbers. ValueError when the source run's
    reports are gone (resuming without them would let the placebo read its own numbers)."""
    source = run_tags.get(PLACEBO_SOURCE_RUN)
    if not source:
        return None
    reports = epoch_reports(source)
    if not reports:
        raise ValueError(
            f"this placebo cell read run {source}'s metrics, and that run's history.json is gone; rerun the "
            "cell with `mimic-learn reproduce ... --arms placebo --force` instead"
        )
    return PlaceboView(int(run_tags.get(PLACEBO_SOURCE_SEED, "-1")), source, reports)


def placebo_cell(cell: Cell, kind: str, seeds: list[int], finished: dict) -> Cell | str:
    """``cell`` reading another seed's baseline numbers, or why it cannot run yet."""
    source, seed = source_arm(kind, cell.arm.name), placebo_source_seed(cell.seed, seeds)
    run = finished.get(cell_tag(kind, cell.regime, source, seed))
    if run is None:
        return f"needs {source} seed {seed} first"
    reports = epoch_reports(run.info.run_id)
    wanted = cell.spec.train.epochs - 1  # the last boundary a decision is made at
    if not all(e in reports for e in range(1, wanted + 1)):
        return (
            f"needs {source} seed {seed} with {wanted}+ epochs (run {run.info.run_id[:8]} has {len(reports)})"
        )
    view = PlaceboView(seed, run.info.run_id, reports)
    note = (
        f"seed {cell.seed} read seed {seed}'s `{source}` metrics (run {run.info.run_id[:8]}) at every decision; "
        "its own knobs, its own trainer"
    )
    tags = {CELL_NOTE: note, PLACEBO_SOURCE_SEED: str(seed), PLACEBO_SOURCE_RUN: run.info.run_id}
    return replace(cell, report_view=view, tags=cell.tags | tags | {DERIVED_FROM: run.info.run_id})


# ---------------------------------------------------------------------------------------------- a sitting
def prepare(
    cells: list[Cell], kind: str, seeds: list[int], finished: dict
) -> tuple[list[Cell], dict[str, str]]:
    """The derived cells ready to run (their controller or view filled in from ``finished``), and why each of the
    others cannot run yet (tag -> reason). The constant call is derived once per regime and start."""
    ready: list[Cell] = []
    blocked: dict[str, str] = {}
    actions: dict[tuple[str, str, str], Action | str] = {}
    for cell in cells:
        base, start = split_name(cell.arm.name)
        if base in CONSTANT_ARMS:
            key = (base, cell.regime, start)
            if key not in actions:
                actions[key] = derive_action(kind, cell.regime, cell.arm.name, finished)
            made = actions[key]
            made = constant_cell(cell, made, kind) if isinstance(made, Action) else made
        else:
            made = placebo_cell(cell, kind, seeds, finished)
        if isinstance(made, str):
            blocked[cell.tag] = made
        else:
            ready.append(made)
    return ready, blocked


def missing_reasons(kind: str, missing: dict[str, str], seeds: list[int], finished: dict) -> dict[str, str]:
    """``missing`` with the reason of each derived cell that was not run (not failed) because a prerequisite is
    not finished: "needs <arm> cells in this regime first", "needs <baseline> seed N first"."""
    out = dict(missing)
    for tag, why in missing.items():
        _, regime, arm, seed = tag.split("/")
        base = split_name(arm)[0]
        if why != "not run" or base not in DERIVED_ARMS:
            continue
        source = source_arm(kind, arm)
        if base in CONSTANT_ARMS and not cells_of(kind, regime, source, finished):
            out[tag] = f"needs {source} cells in this regime first"
        elif base == PLACEBO:
            other = placebo_source_seed(int(seed[1:]), seeds)
            if cell_tag(kind, regime, source, other) not in finished:
                out[tag] = f"needs {source} seed {other} first"
    return out
