"""Moved to ``evals/scenarios.py`` (its data: ``evals/data/scenarios.yaml``). A shim for the files of other
changes that still import it here (agents/controller_data.py, tests/test_prompts_compact.py, tests/test_faults.py,
tests/test_local_graph.py); remove it once they import ``mimic_learn.evals.scenarios``."""

from ..evals.scenarios import (
    ALPHA_DOWN,
    DROP_DOWN,
    DROP_UP,
    KEEP,
    LR_DOWN,
    LR_UP,
    ROLLBACK,
    WD_DOWN,
    WD_UP,
    EvalReport,
    Move,
    Scenario,
    ScenarioResult,
    bank,
    evaluate_controller,
    is_sensible,
    moves,
    opt,
    scenario_trainer,
)

__all__ = [
    "ALPHA_DOWN", "DROP_DOWN", "DROP_UP", "KEEP", "LR_DOWN", "LR_UP", "ROLLBACK", "WD_DOWN", "WD_UP",
    "EvalReport", "Move", "Scenario", "ScenarioResult", "bank", "evaluate_controller", "is_sensible", "moves",
    "opt", "scenario_trainer",
]  # fmt: skip
