"""The trainer's state and where it is kept: the checkpoint dict, its files, the RNG, retention.

    ckpt = capture(trainer)                       # model, optimizer, scheduler, RNG, knobs, history, events
    restore(trainer, ckpt)                        # the trainer continues exactly as from the moment of `ckpt`
    restore_weights(trainer, ckpt)                # a rollback: the clock (epoch, history, RNG) goes on forward
    save(epoch_file(folder, 3), ckpt); ckpt = load(latest_file(folder))

A checkpoint is a plain dict of tensors and numbers (``torch.load(..., weights_only=True)`` reads it):
``epoch``, ``model``, ``optimizer``, ``scheduler``, ``rng`` (``TrainerRng.state()``; empty for a user's loop,
which owns its RNG), ``knobs`` (what the optimizer state does not hold), ``history`` and ``events``.

A *snapshot* (``snapshot``/``restore_snapshot``) is a checkpoint plus what lives only between two epochs:
staged weight deltas, events not yet reported, and the retention checkpoints. Counterfactual branches take one
to come back; the runner's resume file is one made portable (``portable_snapshot``).

Retention (``Retention``, kept at every epoch boundary before any decision): the pre-decision checkpoints of
the last ``keep`` boundaries in memory, the newest boundary whose epoch was finite (``last_good``), and the
last ``keep_on_disk`` boundaries as ``epoch_<NNNN>.pt`` files. Files are written to ``.tmp`` first and then
renamed, so a killed process never leaves a half-written checkpoint.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .knobs import checkpoint_knobs, restore_knobs
from .reports import EpochReport

EPOCH_FILES = "epoch_*.pt"  # retention checkpoints
RESUME_FILES = "resume_*.pt"  # the runner's resume state (graphs/resume.py)
RUN_FILES = (
    EPOCH_FILES,
    RESUME_FILES,
    "epoch_*.tmp",
    "resume_*.tmp",
)  # everything a run writes in its folder


def clone_tree(obj):
    """Deep copy of a state_dict-like tree, tensors detached and cloned."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: clone_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [clone_tree(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(clone_tree(v) for v in obj)
    return copy.deepcopy(obj)


# ---------------------------------------------------------------------------------------------- files
def epoch_file(folder: Path, epoch: int) -> Path:
    return Path(folder) / f"epoch_{epoch:04d}.pt"


def resume_file(folder: Path, epoch: int) -> Path:
    return Path(folder) / f"resume_{epoch:04d}.pt"


def files(folder: Path | None, pattern: str = EPOCH_FILES) -> list[Path]:
    """The checkpoint files of ``pattern`` in ``folder``, oldest first (empty when there is no folder)."""
    return sorted(Path(folder).glob(pattern)) if folder is not None and Path(folder).is_dir() else []


def latest_file(folder: Path | None, pattern: str = EPOCH_FILES) -> Path | None:
    found = files(folder, pattern)
    return found[-1] if found else None


def prune(folder: Path | None, keep: int, pattern: str = EPOCH_FILES) -> None:
    """Delete all but the newest ``keep`` files of ``pattern``."""
    found = files(folder, pattern)
    for old in found[: max(0, len(found) - keep)]:
        old.unlink(missing_ok=True)


def save(path: str | Path, state: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a killed process never leaves a half-written checkpoint
    return path


def load(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------- RNG
class TrainerRng:
    """Our Trainer's own random state: torch's (dropout), CUDA's, and the batch-order generator.

    Dropout draws from torch's global RNG. The trainer keeps its own copy of that state and swaps it in for its
    epochs (``active()``), so code that uses the global RNG between epochs (another trainer, a tool, a
    benchmark's baseline) cannot change what this run does."""

    def __init__(self, seed: int, device: torch.device):
        self.device = device
        self.torch = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.data = torch.Generator().manual_seed(seed)

    @contextmanager
    def active(self) -> Iterator[None]:
        """Run the block on this trainer's RNG state; the global state outside is left as it was."""
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.set_rng_state(self.torch)
            if cuda:
                torch.cuda.set_rng_state(self.cuda, self.device)
            try:
                yield
            finally:
                self.torch = torch.get_rng_state()
                if cuda:
                    self.cuda = torch.cuda.get_rng_state(self.device)

    def state(self) -> dict:
        return {
            "torch": self.torch.clone(),
            "data": self.data.get_state(),
            "cuda": [self.cuda.clone()] if self.cuda is not None else [],
        }

    def load(self, rng: dict) -> None:
        self.torch = rng["torch"].clone()
        self.data.set_state(rng["data"])
        if rng.get("cuda") and self.cuda is not None:
            self.cuda = rng["cuda"][0].clone()


# ---------------------------------------------------------------------------------------------- the state dict
def capture(trainer) -> dict:
    """Everything needed to continue exactly: model, optimizer, scheduler, RNG states, knobs, history."""
    return {
        "epoch": trainer.epoch,
        "model": clone_tree(trainer.model.state_dict()),
        "optimizer": clone_tree(trainer.optimizer.state_dict()),
        "scheduler": clone_tree(trainer.scheduler.state_dict()) if trainer.scheduler is not None else None,
        "rng": trainer.rng.state() if trainer.rng is not None else {},
        "knobs": checkpoint_knobs(trainer),
        "history": [r.to_dict() for r in trainer.history],
        "events": copy.deepcopy(trainer.events),
    }


def restore_weights(trainer, ckpt: dict) -> None:
    """Model, optimizer, scheduler and knobs back to ``ckpt``; staged deltas are dropped."""
    trainer.model.load_state_dict(clone_tree(ckpt["model"]))
    trainer.optimizer.load_state_dict(clone_tree(ckpt["optimizer"]))
    if trainer.scheduler is not None and ckpt["scheduler"] is not None:
        trainer.scheduler.load_state_dict(clone_tree(ckpt["scheduler"]))
    restore_knobs(trainer, ckpt["knobs"])
    trainer._deltas = {}


def restore(trainer, ckpt: dict) -> None:
    """Full restore: weights and knobs, and the clock (epoch, RNG, history, events)."""
    restore_weights(trainer, ckpt)
    trainer.epoch = ckpt["epoch"]
    if trainer.rng is not None:
        trainer.rng.load(ckpt["rng"])
    trainer.history = [EpochReport(**r) for r in ckpt["history"]]
    trainer.events = copy.deepcopy(ckpt.get("events", []))
    trainer._pending_events = []


def snapshot(trainer) -> dict:
    """A checkpoint plus what lives only between epochs: staged deltas, unreported events, retention."""
    return {
        "ckpt": capture(trainer),
        "deltas": dict(trainer._deltas),
        "pending_events": list(trainer._pending_events),
        **trainer.retention.state(),
    }


def restore_snapshot(trainer, snap: dict) -> None:
    restore(trainer, snap["ckpt"])
    trainer._deltas = {
        k: v.to(trainer.device) if isinstance(v, torch.Tensor) else v for k, v in snap["deltas"].items()
    }
    trainer._pending_events = list(snap["pending_events"])
    trainer.retention.load_state(snap)


def portable_snapshot(snap: dict) -> dict:
    """A snapshot that can go to a file: tensor deltas on the CPU; a gradient-dependent delta (a function, not
    data) is left out."""
    deltas = {k: v.detach().cpu() for k, v in snap["deltas"].items() if not callable(v)}
    return {**snap, "deltas": deltas}


# ---------------------------------------------------------------------------------------------- retention
class Retention:
    """The checkpoints kept at epoch boundaries; see the module docstring."""

    def __init__(self, folder: Path | None, keep_on_disk: int, keep: int = 2):
        self.folder = Path(folder) if folder is not None else None
        self.keep_on_disk = keep_on_disk
        self.keep = keep  # boundaries kept in memory (a runner deciding every k epochs keeps k+1)
        self.pre_decision: dict[int, dict] = {}
        self.last_good: dict | None = None
        self.paused = False  # a counterfactual branch (``paused_for_branch``) writes no retention checkpoints

    def record(self, epoch: int, ckpt: dict, finite: bool) -> None:
        """Boundary ``epoch``, before any decision: pre-decision, last good (if the epoch was finite), disk."""
        if self.paused:
            return
        self.pre_decision[epoch] = ckpt
        for old in sorted(self.pre_decision)[: -self.keep]:
            del self.pre_decision[old]
        if finite:
            self.last_good = ckpt
        if self.folder is not None:
            save(epoch_file(self.folder, epoch), ckpt)
            prune(self.folder, self.keep_on_disk)

    def adopt(self, epoch: int, ckpt: dict, good: bool) -> None:
        """A revert made ``ckpt`` the state of boundary ``epoch``: it is the pre-decision state a later revert
        returns to, and with ``good`` also the last good state (and the boundary's file, if it is on disk)."""
        self.pre_decision[epoch] = ckpt
        if not good:
            return
        self.last_good = ckpt
        if self.folder is not None and epoch_file(self.folder, epoch).exists():
            save(epoch_file(self.folder, epoch), ckpt)

    @contextmanager
    def paused_for_branch(self) -> Iterator[None]:
        was, self.paused = self.paused, True
        try:
            yield
        finally:
            self.paused = was

    def state(self) -> dict:
        return {"pre_decision": dict(self.pre_decision), "last_good": self.last_good}

    def load_state(self, state: dict) -> None:
        self.pre_decision = dict(state["pre_decision"])
        self.last_good = state["last_good"]

    def latest_file(self) -> Path | None:
        return latest_file(self.folder)


def commit_point(trainer) -> dict:
    """What a decision's commit changes besides the weights and knobs: the optimizer's groups (lr, weight decay, a
    one-cycle schedule's fields), staged deltas, the schedule, and the event logs' lengths (``rewind`` undoes it)."""
    return {
        "groups": [dict(g) for g in trainer.optimizer.param_groups],
        "deltas": dict(trainer._deltas),
        "scheduler": copy.deepcopy(trainer.scheduler.state_dict()) if trainer.scheduler is not None else None,
        "events": (len(trainer.events), len(trainer._pending_events)),
    }


def rewind(trainer, point: dict) -> None:
    """Back to ``commit_point``'s state (a commit that failed half-way)."""
    for group, old in zip(trainer.optimizer.param_groups, point["groups"], strict=True):
        group.update({k: v for k, v in old.items() if k != "params"})
    trainer._deltas = point["deltas"]
    if point["scheduler"] is not None:
        trainer.scheduler.load_state_dict(point["scheduler"])
    del trainer.events[point["events"][0] :]
    del trainer._pending_events[point["events"][1] :]
