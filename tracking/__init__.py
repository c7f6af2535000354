"""MLflow tracking: params, per-epoch metrics, LangGraph traces, decisions table, plots, the final model.

Structure: one parent run per command (``run``, ``reproduce``), one nested child run per arm x seed.

* ``store``: the experiment, parent runs, ``MlflowTracker`` (the observer that logs a child run), reading a
  logged run back (decisions, outcome records);
* ``records``: what a run's outcomes become (epoch metrics, decisions-table rows, token usage and cost);
* ``previews``: the one-line previews of a decision trace in MLflow's Traces list;
* ``runs``: the rules for runs already in the store (``resumable``, ``queue_note``, ``clean_plan``);
* ``tags``: every MLflow tag name; ``plots``: the PNG figures.
"""

from .previews import decision_preview, format_number, report_preview
from .records import (
    decision_rows,
    decisions_to_script,
    describe_usage,
    epoch_metrics,
    notes_from_tags,
    run_usage,
)
from .store import (
    DEFAULT_TRACKING_URI,
    OUTCOMES_ARTIFACT,
    TRACE_TAG_LIMIT,
    MlflowTracker,
    end_runs_down_to,
    load_decisions,
    load_outcomes,
    log_plots,
    parent_run,
    run_params,
    setup,
    version_tags,
)

__all__ = [
    "DEFAULT_TRACKING_URI",
    "OUTCOMES_ARTIFACT",
    "TRACE_TAG_LIMIT",
    "MlflowTracker",
    "decision_preview",
    "decision_rows",
    "decisions_to_script",
    "describe_usage",
    "end_runs_down_to",
    "epoch_metrics",
    "format_number",
    "load_decisions",
    "load_outcomes",
    "log_plots",
    "notes_from_tags",
    "parent_run",
    "report_preview",
    "run_params",
    "run_usage",
    "setup",
    "version_tags",
]
