"""Experiments: the two published reproductions (``reproduce``) and sweeps of arms x seeds on Ray Tune.

    from mimic_learn.experiments import ReproduceOptions, reproduce, report_from_cells
    reproduce(ReproduceOptions("paper", regimes=["100"], seeds=[0, 1, 2], controller="rules"))
    report_from_cells("paper", Path("docs/results/paper_cells.csv"), Path("paper.md"), "rebuilt")

Modules, in the order they depend on each other (each imports only those above it):

- ``published``: the published tables and what reports say about them.
- ``stats``: paired differences, Holm, TOST, verdicts, mean ± SD.
- ``arms``: ``Arm`` (also a sweep spec's arm entry), the reproductions' arms, starts, ``arm_spec``.
- ``cells``: a cell's MLflow run, finding and collecting cells, the per-cell CSV file.
- ``report``: the reproduction report (and the rows sweep reports share).
- ``plan``: ``reproduce --dry-run``'s cells, decisions, time, tokens and cost.
- ``server`` / ``ray_cluster``: an MLflow server for a block; Ray start, trial resources, Tune storage.
- ``pbt``: a Population Based Training cell; ``ray_trials``: cells as Ray Tune trials.
- ``spec``: the sweep spec file; ``sweep``: running a spec and its report; ``reproduction``: the
  reproductions (``reproduce``, ``report_from_cells``).

Names are imported from their module on first use, so that a process that needs one light module (a PBT
member's imports ``pbt``) does not import MLflow and LangGraph through this package.
"""

from __future__ import annotations

import importlib
from typing import Any

# module -> the names it gives the package's public API
_PUBLIC = {
    "published": "BLOG_NOTES BLOG_TABLE PAPER_EPOCHS PAPER_NOTES PAPER_TABLE",
    "stats": "ALPHA EQUIVALENCE_MARGINS PairedComparison compare_arms detectable_effect fmt_mean_sd holm "
    "margin_for mean_sd paired_diff paired_t verdict",
    "arms": "BLOG_ARMS BLOG_TOOLS OPTIONAL_ARMS PAPER_ARMS PAPER_TOOLS PBT_ARM START_VARIANTS Arm PbtSettings "
    "arm_spec at_start blog_config cell_config chosen_controller default_arms known_arms paper_config resolve_arms task_for",
    "cells": "CELL_FIELDS Cell cell_tag cell_tags cells_csv_path collect failed_cell_errors finished_cells "
    "missing_cells read_cells_csv run_cell write_cells_csv",
    "report": "arm_row_cells missing_section pbt_compute_note plot_curves recovery_lines subset_policy "
    "write_report",
    "plan": "EPOCH_SECONDS NO_TOKEN_CONTROLLERS TIMING_ARMS TOKENS_PER_DECISION EpochTiming PlanRow ReproducePlan "
    "describe_plan measured_epoch_seconds "
    "oracle_candidates oracle_horizon plan_reproduce",
    "server": "absolute_tracking_uri free_port tracking_server",
    "ray_cluster": "RAY_MISSING TrialResources start_ray",
    "pbt": "run_pbt_cell",
    "ray_trials": "ray_executor record_failures run_cells_on_ray",
    "spec": "SweepSpec load_spec",
    "sweep": "SweepOutcome run_sweep write_sweep_report",
    "reproduction": "ReproduceOptions report_from_cells reproduce",
    "derived_arms": "DERIVED_ARMS PRIMARY_LLM_ARM PlaceboView most_frequent_action resume_view",
    "tuned": "SEARCH_SPACES TuneOptions TunedParamsMissing tune_static tuned_arm tuned_compute_note",
}
_EXPORTS = {name: module for module, names in _PUBLIC.items() for name in names.split()}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
