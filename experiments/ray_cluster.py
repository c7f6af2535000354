"""Ray for sweeps and PBT: joining a cluster or starting Ray here, a trial's resources, where Tune keeps trial
folders, and a failed trial's error as one line.

Light on purpose: a PBT member's process (restarted at every exploit) imports this module and pbt.py, so
neither imports MLflow, LangGraph or the agents at module level.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

RAY_MISSING = 'Ray is not installed: `pip install "mimic-learn[ray]"` (or `pip install "ray[tune]"`)'


@dataclass
class TrialResources:
    cpus: float = 1.0
    gpus: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"cpu": self.cpus, "gpu": self.gpus}


def start_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join the cluster at ``address``, or start Ray on this machine with ``num_cpus`` (default: all cores).
    Returns True when this call started it (the caller then shuts it down); an initialised Ray is reused."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # With verbose=0 and the classic output, Tune prints no tables (we print a line per trial), and no warning
    # that PBT's frequent checkpoints snapshot the experiment often.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune warns for every paused PBT member whose result.json it looks for before the member wrote one.
    logging.getLogger("ray.tune.logger").setLevel(logging.ERROR)
    try:
        import ray
    except ImportError:
        raise RuntimeError(RAY_MISSING) from None
    if ray.is_initialized():
        return False
    # Trials keep this process's working directory (locally) instead of Tune's per-trial folder.
    runtime_env = {"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0", "RAY_USAGE_STATS_ENABLED": "0"}}
    common = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": False,  # trials log to MLflow; their failures come back through Tune
        "runtime_env": runtime_env,
    }
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), **common)
    return True


def tune_storage(path: str | None) -> str:
    """Where Tune keeps trial folders and PBT checkpoints: an absolute path, or a URI (s3://, gs://) that every
    node of a cluster reaches (PBT on several nodes needs one)."""
    if path and "://" in path:
        return path
    return str(Path(path or ".mimic/ray_results").resolve())


def trial_error(error: BaseException | None) -> str:
    """A failed trial's error as one line ("" for none): the trial's own exception, not Ray's wrapper."""
    if error is None:
        return ""
    cause = getattr(error, "cause", None) or error  # RayTaskError wraps the trial's own exception
    text = f"{type(cause).__name__}: {cause}"
    return text.strip().splitlines()[-1][:2000] if "Traceback" in text else text[:2000]
