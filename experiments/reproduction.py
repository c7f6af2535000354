"""The two published experiments, reproduced side by side: run every missing cell, then write the report.

    mimic-learn reproduce paper --regimes 600,100,10 --seeds 0,1,2
    mimic-learn reproduce blog --data-dir <folder with cifar-10-batches-py>     (or --task mnist32, a proxy)

    from mimic_learn.experiments import ReproduceOptions, reproduce
    reproduce(ReproduceOptions("paper", regimes=["100"], seeds=[0, 1], controller="rules", task="digits"))

A *cell* is one arm x regime x seed, one nested MLflow child run tagged ``mimic.experiment``/``mimic.cell``.
Cells already FINISHED in the store are skipped (``force`` reruns them), so a table can be built across
several sittings. The arms derived from other arms' cells (``constant_policy``, ``placebo``: derived_arms.py)
run after a sitting's other cells, from what the store holds by then. The report is always computed from every
finished cell in the store, and written with its per-cell file, from which ``report_from_cells`` rebuilds it
without the store.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import mlflow

from ..agents.providers import ProviderOptions
from ..tracking.tags import EXPERIMENT_PARENT, REPORT
from ..training.config import TrainConfig
from .arms import (
    PBT_ARM,
    START_VARIANTS,
    Arm,
    arm_spec,
    at_start,
    cell_config,
    default_arms,
    known_arms,
    resolve_arms,
    task_for,
)
from .cells import (
    Cell,
    cell_tag,
    cells_csv_path,
    collect,
    finished_cells,
    missing_cells,
    read_cells_csv,
    run_cell,
    write_cells_csv,
)
from .derived_arms import is_derived, missing_reasons, prepare
from .report import write_report
from .tuned import TunedParamsMissing, explain_untuned, tuned_arm, tuned_compute_note

# An executor for the cells to run (``ray_trials.ray_executor``: one Ray Tune trial each); None: in order here.
CellRunner = Callable[[list[Cell]], object]


@dataclass
class ReproduceOptions:
    """One reproduction: the grid (``kind`` x regimes x seeds x arms x starts), how each cell trains and is
    controlled, and where the report goes.

    ``model`` / ``val_size``: override the experiment's model and validation split (e.g. a cheaper proxy).
    ``starts``: START_VARIANTS keys; every arm runs from each (``<arm>@<start>`` beyond "published").
    ``fixed_subset``: every seed trains on the subset of data seed 0 (cells are keyed without it: such a table
    needs its own MLflow experiment and ``out``; a store of the other mode's cells is refused). ``report_only``:
    run nothing, rebuild the report."""

    kind: str  # "paper" or "blog"
    regimes: list[str]
    seeds: list[int]
    arm_names: list[str] | None = None  # None: the experiment's published arms
    controller: str = "rules"  # the controller of the arms whose controller is "LLM"
    data_dir: str = "data"
    epochs: int | None = None  # None: the experiment's (paper: PAPER_EPOCHS; blog: 20)
    threads: int | None = None  # torch threads per run
    force: bool = False  # rerun cells already finished in the store
    out: Path | None = None  # the report; None: docs/results/<kind>.md
    task: str | None = None  # None: mnist (paper) or cifar10 (blog)
    command: str = ""  # the command line, printed in the report
    provider: ProviderOptions = field(default_factory=ProviderOptions)
    state_db: str = ".mimic/graph_state.sqlite"
    report_only: bool = False
    model: str | None = None
    val_size: int | None = None
    starts: list[str] = field(default_factory=lambda: ["published"])
    fixed_subset: bool = False
    tuned_file: Path | None = None  # the tuned_static arm's values (None: docs/results/<kind>_tuned.json)

    @property
    def report_path(self) -> Path:
        return self.out or Path("docs/results") / f"{self.kind}.md"

    @property
    def task_name(self) -> str:
        return task_for(self.kind, self.task)


def train_config(options: ReproduceOptions, regime: str, seed: int) -> TrainConfig:
    """The experiment's TrainConfig of one regime and seed, with the options' task, model and data overrides."""
    return cell_config(
        options.kind, options.task_name, regime, seed, data_dir=options.data_dir, epochs=options.epochs,
        threads=options.threads, model=options.model, val_size=options.val_size, fixed_subset=options.fixed_subset,
    )  # fmt: skip


def pending_cells(
    options: ReproduceOptions, arms: list[Arm], done: dict, echo: Callable[[str], None]
) -> tuple[list[Cell], int]:
    """The cells to run in this sitting (none with ``report_only``), and how many finished ones are reused."""
    pending: list[Cell] = []
    skipped = 0
    if options.report_only:
        return pending, skipped
    for regime in options.regimes:
        for seed in options.seeds:
            for arm in arms:
                tag = cell_tag(options.kind, regime, arm.name, seed)
                if tag in done and not options.force:
                    skipped += 1
                    echo(f"skip {tag} (finished in run {done[tag].info.run_id[:8]})")
                    continue
                train = train_config(options, regime, seed)
                try:  # tuned_static: its tuned values; without them the cell is reported "not run (fix)"
                    cell_arm = tuned_arm(arm, options.kind, regime, train, options.tuned_file)
                except TunedParamsMissing as exc:
                    echo(f"not run {tag}: {exc}")
                    continue
                spec = arm_spec(cell_arm, train, options.controller, options.state_db, options.provider)
                pending.append(Cell(options.kind, regime, seed, cell_arm, spec))
    return pending, skipped


def run_here(cells: list[Cell], echo: Callable[[str], None]) -> None:
    """Run ``cells`` one after the other in this process (a PBT cell as its population, on Ray)."""
    for cell in cells:
        cell_start = time.perf_counter()
        if cell.arm.population:
            from .pbt import run_pbt_cell

            run_pbt_cell(cell)
        else:
            run_cell(
                cell.spec, cell.arm, cell.experiment, cell.regime, cell.seed,
                report_view=cell.report_view, extra_tags=cell.tags,
            )  # fmt: skip
        echo(f"done {cell.tag} in {time.perf_counter() - cell_start:.0f}s")


def run_sitting(
    options: ReproduceOptions, pending: list[Cell], run_cells: CellRunner | None, echo: Callable[[str], None]
) -> tuple[int, dict[str, str]]:
    """Run a sitting's cells: every other arm's first (on ``run_cells``, or here), then the derived arms'
    (derived_arms.py) from what the store holds by then, in this process (a Ray trial would not pass a placebo's
    view). Returns (cells run, tag -> why of the derived cells whose prerequisites are not finished)."""
    first = [c for c in pending if not is_derived(c.arm)]
    if run_cells is not None and first:
        run_cells(first)
    if run_cells is None:
        run_here(first, echo)
    derived = [c for c in pending if is_derived(c.arm)]
    if not derived:
        return len(first), {}
    ready, blocked = prepare(derived, options.kind, options.seeds, finished_cells(options.kind))
    for tag, why in blocked.items():
        echo(f"skip {tag} (not run: {why})")
    run_here(ready, echo)
    return len(first) + len(ready), blocked


def proxy_note(options: ReproduceOptions) -> str:
    """What the report says when the blog experiment runs on another task than CIFAR-10."""
    if options.kind != "blog" or options.task_name == "cifar10":
        return ""
    stem = "ImageNet stem: torchvision's resnet18" if options.model == "resnet18" else "CIFAR stem"
    return (
        f"PROXY: task `{options.task_name}`, not CIFAR-10 (no copy is available offline here). ResNet-18 ({stem}) "
        "with the blog's optimizer and schedule, on a smaller data set and fewer epochs; the numbers are not "
        "comparable to the blog's."
    )


def sitting_header(options: ReproduceOptions, ran: int, skipped: int, wall: float, data: dict) -> list[str]:
    """The report's header: command, hardware, this sitting's wall time, the cells in the report."""
    import torch

    cpu = platform.processor() or platform.machine()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cells = [c for arms_ in data.values() for seeds_ in arms_.values() for c in seeds_.values()]
    return [
        f"Command: `{options.command}`",
        "",
        f"Hardware: {torch.get_num_threads()} torch threads on {cpu}, device {device}; "
        f"controller for the LLM arms: `{options.controller}`.",
        "",
        "Report rebuilt from the MLflow store (--report-only): no cells were run in this sitting."
        if options.report_only
        else f"Wall time of this sitting: {wall / 60:.1f} min ({ran} cells run, {skipped} reused from the MLflow store).",
        "",
        f"Cells in this report: {len(cells)}, {sum(c['seconds'] for c in cells) / 60:.0f} min of "
        "run time in total (sum of their MLflow child runs, across all sittings).",
    ]


def publish_report(
    options: ReproduceOptions,
    data: dict,
    missing: dict[str, str],
    arms: list[Arm],
    header: list[str],
    echo: Callable[[str], None],
) -> Path:
    """Write the report and its per-cell file, and log the report and its plots to the active (parent) run."""
    path = write_report(
        options.kind, data, options.regimes, arms, header, options.report_path, proxy_note(options), missing
    )
    cells_csv = write_cells_csv(options.kind, data, missing, cells_csv_path(options.report_path))
    echo(f"per-cell results: {cells_csv} (rebuild the report with --from-cells {cells_csv})")
    mlflow.log_artifact(str(path), artifact_path="report")
    for png in sorted(path.parent.glob(f"{path.stem}/plots_*/*.png")):
        mlflow.log_artifact(str(png), artifact_path=f"report/{png.parent.name}")
    mlflow.set_tag(REPORT, str(path))
    return path


def check_subset_mode(done: dict, fixed_subset: bool, experiment: str) -> None:
    """Refuse a sitting whose subset mode differs from the finished cells': cells are keyed without their data
    seed, so a --fixed-subset sitting in a store of per-seed cells (or the reverse) would skip or mix them."""
    want = "0" if fixed_subset else "None"
    other = sorted(tag for tag, run in done.items() if run.data.params.get("data_seed", "None") != want)
    if other:
        mode = "per-seed subsets" if fixed_subset else "one fixed subset (--fixed-subset)"
        raise ValueError(
            f"{len(other)} finished cells of this MLflow experiment ({other[0]}, ...) trained on {mode}; "
            f"cells are keyed without the data seed, so give this sitting its own --mlflow-experiment (and "
            f"--out), e.g. --mlflow-experiment mimic-reproduce-{experiment}-"
            f"{'fixed' if fixed_subset else 'per-seed'}"
        )


def reproduce(
    options: ReproduceOptions,
    *,
    echo: Callable[[str], None] = print,
    run_cells: CellRunner | None = None,
) -> Path:
    """Run every missing cell (arm x regime x seed) under one parent run, then write the report.

    ``run_cells(cells)``: an executor for the cells to run (``ray_trials.ray_executor``: one Ray Tune trial
    each, failures recorded in the store); None runs them one after the other in this process."""
    from ..tracking import parent_run

    arms = at_start(resolve_arms(options.kind, options.arm_names), options.starts or ["published"])
    done = finished_cells(options.kind)
    check_subset_mode(done, options.fixed_subset, options.kind)
    report_arms = list(arms)
    if PBT_ARM not in arms and any(tag.split("/")[2] == PBT_ARM.name for tag in done):
        report_arms.append(PBT_ARM)  # a report shows the classical rival whenever the store has its cells
    start = time.perf_counter()
    with parent_run(f"reproduce {options.kind}") as parent:
        mlflow.set_tags({EXPERIMENT_PARENT: options.kind})
        mlflow.log_params(
            {
                "kind": options.kind,
                "regimes": ",".join(options.regimes),
                "seeds": ",".join(map(str, options.seeds)),
                "controller": options.controller,
                "task": options.task_name,
                "arms": ",".join(a.name for a in arms),
            }
        )
        pending, skipped = pending_cells(options, arms, done, echo)
        ran, blocked = run_sitting(options, pending, run_cells, echo)
        wall = time.perf_counter() - start
        finished = finished_cells(options.kind)
        data = collect(finished, options.kind, options.regimes, report_arms)
        missing = missing_cells(options.kind, options.regimes, report_arms, options.seeds, finished)
        missing = missing_reasons(options.kind, missing, options.seeds, finished)
        missing |= {tag: why for tag, why in blocked.items() if tag in missing}
        missing = explain_untuned(
            missing, options.kind, lambda r, s: train_config(options, r, s), options.tuned_file
        )
        header = sitting_header(options, ran, skipped, wall, data)
        note = tuned_compute_note(options.kind, report_arms, options.tuned_file)
        header += ["", note] if note else []
        path = publish_report(options, data, missing, report_arms, header, echo)
        echo(f"report: {path} (parent run {parent.info.run_id})")
    return path


def arms_in_file(kind: str, present: set[str], arm_names: list[str] | None) -> list[Arm]:
    """The arms of a report built from a per-cell file: ``arm_names``, else the experiment's default arms plus
    every other known arm the file has, then arms run from mis-tuned starts (``<arm>@<start>``), grouped by
    start in START_VARIANTS order."""
    known = known_arms(kind)
    if arm_names:
        arms = resolve_arms(kind, arm_names)
    else:
        arms = default_arms(kind)
        arms += [a for a in known if a.name in present and a not in arms]
    by_name = {a.name: a for a in known}
    starts = [s for s in START_VARIANTS if any(n.endswith(f"@{s}") for n in present)]
    for start in starts:
        arms += [
            replace(by_name[n.split("@")[0]], name=n, start=start)
            for n in sorted(present)
            if n.endswith(f"@{start}") and n.split("@")[0] in by_name
        ]
    return arms


def report_from_cells(
    kind: str,
    cells_csv: Path,
    out: Path,
    command: str,
    regimes: list[str] | None = None,
    arm_names: list[str] | None = None,
    echo: Callable[[str], None] = print,
    tuned_file: Path | None = None,
    notes: str = "",
) -> Path:
    """Build the report from a committed per-cell file alone (no MLflow store): ``reproduce --from-cells``.
    ``tuned_file``: where ``tuned_static``'s values came from (default docs/results/<kind>_tuned.json);
    ``notes``: Markdown placed under the header (how the cells were produced).
    Arms: ``arm_names``, else the experiment's default arms plus every other known arm the file has; a cell of
    the grid the file does not have appears as "not run (not in <file>)"."""
    data, missing, file_regimes = read_cells_csv(cells_csv, kind)
    if not data and not missing:
        raise ValueError(f"{cells_csv}: no rows for experiment {kind!r}")
    regimes = regimes or file_regimes
    present = {arm for arms in data.values() for arm in arms} | {t.split("/")[2] for t in missing}
    arms = arms_in_file(kind, present, arm_names)
    seeds = sorted(
        {s for arms_ in data.values() for seeds_ in arms_.values() for s in seeds_}
        | {int(t.split("/")[3][1:]) for t in missing}
    )
    for regime in regimes:
        for arm in arms:
            for seed in seeds:
                tag = cell_tag(kind, regime, arm.name, seed)
                if seed not in data.get(regime, {}).get(arm.name, {}) and tag not in missing:
                    missing[tag] = f"not in {Path(cells_csv).name}"
    cells = [c for arms_ in data.values() for seeds_ in arms_.values() for c in seeds_.values()]
    header = [
        f"Command: `{command}`",
        "",
        f"Report built from the per-cell file `{cells_csv}` alone (no MLflow store, no cells run in this "
        f"sitting): {len(cells)} finished cells, {sum(c['seconds'] for c in cells) / 60:.0f} min of run time in "
        f"total; where each cell ran is in the 'ran on' column.",
    ]
    note = tuned_compute_note(kind, arms, tuned_file)
    header += [line for text in (notes, note) if text for line in ("", text)]
    path = write_report(kind, data, regimes, arms, header, out, "", missing)
    echo(f"report: {path} (from {cells_csv})")
    return path
