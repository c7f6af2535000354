"""Every MLflow tag name MIMIC-Learn writes or reads, in one place: a search filter, a writer and a reader of one
tag then cannot drift apart. Values that are themselves names (roles, checkpoint states) are here too.

    mlflow.set_tags({tags.ROLE: tags.ROLE_CHILD, tags.ARM: arm})
    client.search_runs(ids, filter_string=f"tags.`{tags.THREAD_ID}` = '{thread}'")
"""

from __future__ import annotations

# --- MLflow's own
PARENT_RUN_ID = "mlflow.parentRunId"  # a nested run's parent
TRACE_NAME = "mlflow.traceName"  # a trace's name in the Traces list

# --- versions, on every run (store.version_tags)
VERSION = "mimic_learn.version"
TORCH_VERSION = "torch.version"
DEVICE = "device"
PYTHON = "python"
LANGGRAPH_VERSION = "langgraph.version"
MLFLOW_VERSION = "mlflow.version"
CODE_VERSION = "code.version"  # the git commit, where there is one

# --- a command's parent run and its child runs (one per arm x seed)
ROLE = "mimic.role"
ROLE_PARENT = "parent"
ROLE_CHILD = "child"
ARM = "mimic.arm"
THREAD_ID = "mimic.thread_id"  # the LangGraph thread; names the run's checkpoint folder
DATA = "mimic.data"
LOG_MODEL = "mimic.log_model"
TRACES = "mimic.traces"
STATE_DB = "mimic.state_db"  # the graph checkpointer's SQLite file (resume)
CHECKPOINT_DIR = "mimic.checkpoint_dir"  # the trainer checkpoints (resume)
PRICE = "mimic.price"  # where a run's estimated cost's price came from
INTEGRATION = "mimic.integration"  # the framework of a Lightning / Hugging Face callback run
ERROR = "mimic.error"  # why a run failed
# What became of a child run's checkpoint folder when it finished ("removed", "kept") or when `mimic-learn
# clean` removed it ("cleaned"). `resume` reads it to say why a run cannot be resumed.
CHECKPOINTS = "mimic.checkpoints"
CHECKPOINTS_REMOVED = "removed"
CHECKPOINTS_KEPT = "kept"
CHECKPOINTS_CLEANED = "cleaned"
# `mimic-learn note <run-id> "text"` sets the tag mimic.note.<unix ms>-<random> = text on the run; the running
# process reads the run's tags before each decision (MlflowTracker.poll_notes). See
# docs/guides/instructions-and-notes.md.
NOTE_PREFIX = "mimic.note."

# --- a decision's trace (and its `observe` span's attributes)
EPOCH = "epoch"
DECISION_EFFECT = "mimic.decision_effect"
DECISION_EFFECT_EPOCH = "mimic.decision_effect_epoch"
COUNTERFACTUAL_HORIZON = "mimic.counterfactual_horizon"
TRACE_ATTRIBUTE_ERROR = "mimic.trace_attribute_error"
INSTRUCTION = "mimic.instruction"
NOTES = "mimic.notes"

# --- experiments (reproduce) and sweeps: a cell is one arm x regime x seed
EXPERIMENT = "mimic.experiment"
EXPERIMENT_PARENT = "mimic.experiment_parent"
CELL = "mimic.cell"
REGIME = "mimic.regime"
ARM_NAME = "mimic.arm_name"
SEED = "mimic.seed"
HOST = "mimic.host"
REPORT = "mimic.report"
SWEEP = "mimic.sweep"
MISSING_CELLS = "mimic.missing_cells"
PBT_POPULATION = "mimic.pbt.population"
COMPUTE_TRIALS = "mimic.compute_trials"
# a derived cell (experiments/derived_arms.py): what it was given (the constant call it applied, the seed whose
# metrics a placebo read; the report's notes and the per-cell file's note column), and where that came from
CELL_NOTE = "mimic.cell_note"
DERIVED_FROM = "mimic.derived_from"  # run ids of the cells it was derived from
PLACEBO_SOURCE_SEED = "mimic.placebo.source_seed"
PLACEBO_SOURCE_RUN = "mimic.placebo.source_run"
