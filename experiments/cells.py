"""A cell is one arm x regime x seed: one nested MLflow child run tagged ``mimic.experiment`` / ``mimic.cell``.

Here: running a cell, finding the finished and failed ones in the store, collecting their results into
``{regime: {arm: {seed: {metric: value}}}}`` (what reports are built from), and the per-cell CSV file that
holds the same results without the store (``reproduce --from-cells``).
"""

from __future__ import annotations

import csv
import platform
from dataclasses import dataclass, field
from pathlib import Path

import mlflow

from ..graphs.runner import AgentRunner, ReportView, RunSpec
from ..tracking.tags import (
    ARM_NAME,
    CELL,
    CELL_NOTE,
    DEVICE,
    ERROR,
    EXPERIMENT,
    HOST,
    PARENT_RUN_ID,
    REGIME,
    SEED,
)
from .arms import Arm


def cell_tag(experiment: str, regime: str, arm: str, seed: int) -> str:
    return f"{experiment}/{regime}/{arm}/s{seed}"


@dataclass
class Cell:
    """One arm x regime x seed to run: what ``reproduce`` and a sweep hand to an executor (in this process, or
    Ray: ray_trials.py)."""

    experiment: str
    regime: str
    seed: int
    arm: Arm
    spec: RunSpec
    # A derived arm's (derived_arms.py): what its controller reads instead of its own report, and tags for its run.
    # run_here passes both to run_cell; a Ray trial (ray_trials._cell_trial) passes neither, so reproduce runs
    # derived cells in its own process.
    report_view: ReportView | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return cell_tag(self.experiment, self.regime, self.arm.name, self.seed)


def cell_tags(experiment: str, regime: str, arm: str, seed: int) -> dict[str, str]:
    """The tags that make an MLflow run a cell (what ``finished_cells`` and ``collect`` read)."""
    return {
        EXPERIMENT: experiment,
        CELL: cell_tag(experiment, regime, arm, seed),
        REGIME: regime,
        ARM_NAME: arm,
        SEED: str(seed),
        HOST: platform.node(),
    }


def run_cell(
    spec: RunSpec,
    arm: Arm,
    experiment: str,
    regime: str,
    seed: int,
    observers=(),
    parent_run_id: str | None = None,
    report_view: ReportView | None = None,
    extra_tags: dict[str, str] | None = None,
) -> str:
    """One cell as a child run of the active run, or of ``parent_run_id`` (a Ray trial has no active run).
    A run that raises ends FAILED with the error in its ``mimic.error`` tag. ``report_view`` / ``extra_tags``:
    a derived cell's (``Cell.report_view``, ``Cell.tags``)."""
    from ..tracking import MlflowTracker

    tags = cell_tags(experiment, regime, arm.name, seed) | dict(extra_tags or {})
    if parent_run_id is not None:
        tags[PARENT_RUN_ID] = parent_run_id
    tracker = MlflowTracker(arm=f"{arm.name}-{regime}-s{seed}", log_model=False, tags=tags)
    runner = AgentRunner(spec, observers=[*observers, tracker], report_view=report_view)
    try:
        runner.run()
    except BaseException as exc:
        active = mlflow.active_run()
        if active is not None and active.info.run_id == tracker.run_id:
            mlflow.set_tag(ERROR, f"{type(exc).__name__}: {exc}"[:5000])
            mlflow.end_run(status="FAILED")
        raise
    finally:
        runner.close()
    return tracker.run_id


# ---------------------------------------------------------------------------------------------- the store
def _newest_cells(experiment: str, status: str) -> dict[str, mlflow.entities.Run]:
    """The newest run with ``status`` of every cell of ``experiment`` in the active MLflow experiment."""
    runs = mlflow.search_runs(
        filter_string=f"tags.`mimic.experiment` = '{experiment}' and attributes.status = '{status}'",
        output_format="list",
        order_by=["attributes.start_time DESC"],
    )
    cells: dict[str, mlflow.entities.Run] = {}
    for run in runs:
        tag = run.data.tags.get(CELL)
        if tag and tag not in cells:
            cells[tag] = run
    return cells


def finished_cells(experiment: str) -> dict[str, mlflow.entities.Run]:
    """Every FINISHED cell of ``experiment`` in the active MLflow experiment, newest first wins."""
    return _newest_cells(experiment, "FINISHED")


def failed_cell_errors(experiment: str) -> dict[str, str]:
    """The newest recorded error of every FAILED cell of ``experiment`` in the active MLflow experiment."""
    return {
        tag: run.data.tags.get(ERROR, "failed (no error recorded)")
        for tag, run in _newest_cells(experiment, "FAILED").items()
    }


def missing_cells(
    experiment: str, regimes: list[str], arms: list[Arm], seeds: list[int], finished: dict
) -> dict[str, str]:
    """Cells of the grid without a finished run: why (the recorded error of a failed run), or 'not run'."""
    errors = failed_cell_errors(experiment)
    missing = {}
    for regime in regimes:
        for arm in arms:
            for seed in seeds:
                tag = cell_tag(experiment, regime, arm.name, seed)
                if tag not in finished:
                    missing[tag] = f"failed: {errors[tag]}" if tag in errors else "not run"
    return missing


def cell_results(client: mlflow.MlflowClient, run: mlflow.entities.Run) -> dict:
    """One finished cell's results: final/best val, test, train, tool use, compute, where it ran."""
    history = lambda key: client.get_metric_history(run.info.run_id, key)  # noqa: E731
    val, calls, invalid = history("val_acc"), history("tool_calls"), history("invalid_calls")
    m = run.data.metrics
    knobs = {
        key for key in ("lr", "dropout", "weight_decay", "alpha") if len({x.value for x in history(key)}) > 1
    }
    return {
        "final_val": val[-1].value if val else float("nan"),
        "best_val": max(x.value for x in val) if val else float("nan"),
        "test": m.get("test_acc", float("nan")),
        "train": m.get("train_acc", float("nan")),
        "calls": round(sum(x.value for x in calls)),
        "accepted": round(sum(x.value for x in calls) - sum(x.value for x in invalid)),
        "fallbacks": round(sum(x.value for x in history("fallbacks"))),
        "knobs": sorted(knobs),
        "epochs": len(val),
        "run_id": run.info.run_id,
        # a PBT cell's run is opened after its population trained: its wall time is a metric
        "seconds": m.get(
            "pbt_wall_s", ((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000.0
        ),
        "val_curve": [x.value for x in sorted(val, key=lambda x: x.step)],
        "data_seed": run.data.params.get("data_seed", "None"),
        # counts are logged as MLflow metrics (floats); the cell and its CSV row hold them as integers
        "decisions": round(m.get("decisions", 0)),
        "tokens_in": round(m.get("total_tokens_in", 0)),
        "tokens_out": round(m.get("total_tokens_out", 0)),
        "ran_on": " on ".join(x for x in (run.data.tags.get(DEVICE, ""), run.data.tags.get(HOST, "")) if x),
        "note": run.data.tags.get(CELL_NOTE, ""),
    }


def collect(
    cells: dict[str, mlflow.entities.Run], experiment: str, regimes: list[str], arms: list[Arm]
) -> dict:
    """{regime: {arm: {seed: {metric: value, ...}}}} from finished cells (final/best val, test, train, tool use)."""
    client = mlflow.MlflowClient()
    names = {a.name for a in arms}
    out: dict = {}
    for tag, run in cells.items():
        _, regime, arm, seed = tag.split("/")
        if regime in regimes and arm in names:
            out.setdefault(regime, {}).setdefault(arm, {})[int(seed[1:])] = cell_results(client, run)
    return out


# ---------------------------------------------------------------------------------------------- per-cell file
# One row per cell of the grid: what a report is built from (``--from-cells``) without the MLflow store.
# status is "finished" or "not run"; note says why a cell is not run (a failed run's error, "not run", ...), or
# for a finished derived cell what it was given (CELL_NOTE).
CELL_FIELDS = (
    "experiment", "regime", "arm", "seed", "status", "final_val", "best_val", "test", "train", "epochs",
    "decisions", "tool_calls", "accepted", "fallbacks", "knobs", "tokens_in", "tokens_out", "wall_s", "ran_on",
    "data_seed", "run_id", "note",
)  # fmt: skip
CSV_KEYS = {"tool_calls": "calls", "wall_s": "seconds"}  # CSV column -> key in collect()'s cell dict
COUNT_FIELDS = ("epochs", "decisions", "tool_calls", "accepted", "fallbacks", "tokens_in", "tokens_out")


def cells_csv_path(report: Path) -> Path:
    """Where ``reproduce`` writes the per-cell file of a report: docs/results/paper.md -> paper_cells.csv."""
    return report.with_name(f"{report.stem}_cells.csv")


def write_cells_csv(experiment: str, data: dict, missing: dict[str, str] | None, path: Path) -> Path:
    """Every cell of ``data`` (``collect``'s shape) and every missing cell (tag -> why) as one CSV row each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CELL_FIELDS)
        writer.writeheader()
        for regime, arms in data.items():
            for arm, seeds in arms.items():
                for seed, cell in sorted(seeds.items()):
                    row = {"experiment": experiment, "regime": regime, "arm": arm, "seed": seed}
                    row |= {"status": "finished", "note": cell.get("note", "")}
                    for name in CELL_FIELDS[5:-1]:
                        value = cell.get(CSV_KEYS.get(name, name), "")
                        if name == "knobs":
                            value = ";".join(value)
                        elif name in COUNT_FIELDS and isinstance(value, float) and value == value:
                            value = round(value)
                        row[name] = value
                    writer.writerow(row)
        for tag, why in sorted((missing or {}).items()):
            _, regime, arm, seed = tag.split("/")
            row = {"experiment": experiment, "regime": regime, "arm": arm, "seed": int(seed[1:])}
            writer.writerow(row | {"status": "not run", "note": (why.splitlines() or [""])[0][:300]})
    return path


def _cell_from_row(row: dict[str, str]) -> dict:
    """A finished row of a per-cell file as ``collect``'s cell dict (no validation curve: the file has none)."""

    def number(name: str, text: str) -> float | int:
        if text in ("", None):
            return 0 if name in COUNT_FIELDS else float("nan")
        # older files wrote counts as floats ("29.0"): read either spelling as an integer
        return round(float(text)) if name in COUNT_FIELDS else float(text)

    cell = {
        CSV_KEYS.get(k, k): number(k, row[k])
        for k in CELL_FIELDS[5:-1]
        if k not in ("knobs", "ran_on", "run_id", "data_seed")
    }
    return cell | {
        "knobs": [k for k in row["knobs"].split(";") if k],
        "ran_on": row["ran_on"],
        "data_seed": row["data_seed"] or "None",
        "run_id": row["run_id"],
        "val_curve": [],
        "note": row["note"],
    }


def read_cells_csv(path: Path, experiment: str | None = None) -> tuple[dict, dict[str, str], list[str]]:
    """A per-cell file back into ``collect``'s shape: (data, missing tag -> why, regimes in file order).
    Rows of another experiment than ``experiment`` are ignored."""
    data: dict = {}
    missing: dict[str, str] = {}
    regimes: list[str] = []
    with Path(path).open(newline="") as fh:
        reader = csv.DictReader(fh)
        absent = set(CELL_FIELDS) - set(reader.fieldnames or [])
        if absent:
            raise ValueError(f"{path}: not a per-cell file; missing columns {sorted(absent)}")
        for row in reader:
            if experiment is not None and row["experiment"] != experiment:
                continue
            regime, arm, seed = row["regime"], row["arm"], int(row["seed"])
            if regime not in regimes:
                regimes.append(regime)
            if row["status"] != "finished":
                missing[cell_tag(row["experiment"], regime, arm, seed)] = row["note"] or row["status"]
                continue
            data.setdefault(regime, {}).setdefault(arm, {})[seed] = _cell_from_row(row)
    return data, missing, regimes
