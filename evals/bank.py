"""The outcome bank: situations (replayable trainer states) and the measured outcome of every candidate action.

    from mimic_learn.evals.bank import default_situations, build_bank, load_bank
    build_bank(default_situations(tasks=["digits"]), "bank.jsonl", resume=True)
    entries = load_bank("bank.jsonl")          # one BankEntry per situation
    entries[0].value("lr_x0.3")                # mean validation monitor over data orders at the longest horizon

A situation is stored as seeds + config + the epoch to replay to (``Situation``): ``replay`` trains the run from
scratch with no controller, applying the situation's induced pathology, and stops at that boundary. From there
every candidate of ``tools.candidates`` (the oracle's set) is rolled out in shadow (``training.fork.run_branch``)
to the end of the run once per data order; the numbers at horizons 1, 5 and the end are read off the same
rollout (a candidate takes no later decision, so its 1-epoch branch is a prefix of its full one).

Data order k re-seeds the batch-order and dropout RNGs of the start checkpoint with ``order_seed(k)``; every action
at a situation sees the same orders, so differences between actions are paired.

Each bank line is one situation: ``situation`` (the spec), ``split``, the ``report`` the controller sees, its
``rendered_report``, the candidates' names and tool calls, and ``trials``: ``OutcomeRecord`` dicts (schema of
``training.outcomes``, kind ``oracle_trial``, one per candidate x order x horizon) with ``report`` and
``rendered_report`` and ``config`` hoisted to the line (they are the same for every trial); ``BankEntry.records()`` gives full
records back. ``thread_id`` of a trial is ``<situation id>#order<k>``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..tools.candidates import Candidate, apply_candidate, candidate_actions
from ..tools.controls import TrainerControls
from ..training.config import TrainConfig
from ..training.fork import branch_numbers, effect, run_branch
from ..training.outcomes import BranchOutcome, OutcomeRecord
from ..training.reports import metric_value
from ..training.trainer import Trainer
from .bank_tasks import DEFAULT_TASKS, PATHOLOGIES, TASKS  # the design (re-exported here)

# 2: lr x10 among the candidates, the rare-class pathology, MNIST-600 and MNIST-10; later extended with
# test-only tasks (MNIST-6000, the ResNet proxy, the diabetes loop) under the same version: train/dev unchanged
BANK_VERSION = 2
DEFAULT_BANK = Path(__file__).parent / "data" / "bank_v2.jsonl.gz"  # gzip: a fraction of the plain JSONL
# v1 (digits at lr 1e-3, no lr x10 candidate): kept because the shipped adapter smollm2-bank-v1 was trained on
# its train split; score on it with --bank-file
BANK_V1 = Path(__file__).parent / "data" / "bank_v1.jsonl.gz"
HORIZONS = (1, 5)  # plus "end": the run's last epoch
N_ORDERS = 3


def mnist_data_dir() -> str:
    import os

    env = os.environ.get("MIMIC_MNIST_DIR")
    if env:
        return env
    return str(Path(__file__).resolve().parents[1].parent / "shared" / "data")


@dataclass(frozen=True)
class Situation:
    """A replayable trainer state: run ``task`` with ``seed`` and ``pathology`` to boundary ``epoch``."""

    task: str
    seed: int
    pathology: str
    epoch: int

    @property
    def id(self) -> str:
        return f"{self.task}/s{self.seed}/{self.pathology}/e{self.epoch}"

    @property
    def run(self) -> tuple[str, int]:
        """The whole run this situation belongs to: splits never cut a (task, seed) apart."""
        return (self.task, self.seed)

    @property
    def total_epochs(self) -> int:
        return TASKS[self.task]["epochs"]

    def config(self) -> TrainConfig:
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r} is not one of {sorted(TASKS)}")
        if self.pathology not in PATHOLOGIES:
            raise ValueError(f"pathology={self.pathology!r} is not one of {sorted(PATHOLOGIES)}")
        spec, path = TASKS[self.task], PATHOLOGIES[self.pathology]
        values = {**spec["config"], "epochs": spec["epochs"], "seed": self.seed, **path.get("config", {})}
        if values["task"] in ("mnist", "mnist32"):
            values["data_dir"] = mnist_data_dir()
        cfg = TrainConfig(**values)
        cfg.lr = cfg.lr * path.get("lr_factor", 1.0)
        return cfg


def split_of(situation: Situation) -> str:
    """train / dev / test by whole run. digits seeds 0-2 train, 3-4 dev, 5+ test; every other task only test
    (so at least one task is never seen while tuning)."""
    if situation.task != "digits":
        return "test"
    return "train" if situation.seed <= 2 else ("dev" if situation.seed <= 4 else "test")


def default_situations(tasks: Iterable[str] | None = None) -> list[Situation]:
    """The shipped bank's design (v2). digits: 6 seeds x 7 pathologies x boundaries 3 and 7 (84 situations);
    mnist100: 2 seeds x 5 pathologies (none, lr x30, lr / 100, NaN spike, rare class) x boundary 3 (10);
    mnist600: 1 seed x the same 5 (5); mnist10: 2 seeds x 4 (no rare class: one image per class already) (8);
    mnist6000: 1 seed x the same 5 (5); resnet_proxy: 1 seed x none, lr x30, NaN spike at boundary 2 (3);
    diabetes: 2 seeds x none, lr x30, lr / 100, dropout 0.8, NaN spike x boundaries 5 and 15 of 30 (20).
    Every task but digits is in the test split only."""
    wanted = list(tasks) if tasks is not None else list(DEFAULT_TASKS)
    out = []
    for task in wanted:
        if task not in TASKS:
            raise ValueError(f"--tasks {task!r} is not one of {sorted(TASKS)}")
        spec = TASKS[task]  # seeds 0..n-1 x pathologies x boundaries (evals/bank_tasks.py)
        out += [
            Situation(task, s, p, e)
            for s in range(spec["seeds"])
            for p in spec["pathologies"]
            for e in spec["boundaries"]
        ]
    # dev first, then train, then test: a partial build is already usable for tuning
    return sorted(out, key=lambda s: ("dev", "train", "test").index(split_of(s)))


def replay(situation: Situation) -> Trainer:
    """Train the situation's run from scratch, no controller, to its boundary; the trainer is paused there with
    its retention state (pre-decision, last good) as a real run would have it. A task with a ``loop`` runs a
    user's loop under ``LoopTrainer`` (evals/loop_tasks.py), every other one our ``Trainer``."""
    cfg = situation.config()
    if not 1 <= situation.epoch < cfg.epochs:
        raise ValueError(f"epoch={situation.epoch} is out of range [1, {cfg.epochs - 1}] for {situation.id}")
    loop = TASKS[situation.task].get("loop")
    if loop is not None:
        from .loop_tasks import LOOP_TASKS

        trainer = LOOP_TASKS[loop](cfg)
    else:
        trainer = Trainer.from_config(cfg)
    spike = PATHOLOGIES[situation.pathology].get("spike")
    for e in range(1, situation.epoch + 1):
        if spike and e == situation.epoch:  # plant an inf in the first weight: the epoch's loss is NaN
            weight = next(p for p in trainer.model.parameters() if p.dim() >= 2)
            with torch.no_grad():
                weight.view(-1)[0] = float("inf")
        trainer.run_epoch()
    return trainer


def order_seed(k: int) -> int:
    return 7919 * (k + 1)


def with_order(start: dict, k: int) -> dict:
    """The checkpoint ``start`` with data order k: batch order and dropout RNG re-seeded (weights untouched)."""
    rng = dict(start["rng"])
    rng["data"] = torch.Generator().manual_seed(order_seed(k)).get_state()
    rng["torch"] = torch.Generator().manual_seed(order_seed(k) + 1).get_state()
    return {**start, "rng": rng}


def horizons_for(situation: Situation) -> list[int]:
    left = situation.total_epochs - situation.epoch
    return sorted({h for h in HORIZONS if h <= left} | {left})


def rollout(trainer: Trainer, calls: list[dict], horizons: list[int], orders: int = N_ORDERS) -> dict:
    """Roll the action ``calls`` out from the paused trainer once per data order to max(horizons); the trainer
    is left as it was. Returns {(order, horizon): branch numbers}."""
    start = trainer.checkpoint()
    controls = TrainerControls(trainer)
    cand = Candidate("action", calls)
    out = {}
    for k in range(orders):

        def setup(t: Trainer) -> None:
            if cand.tool_calls:
                apply_candidate(TrainerControls(t, controls.bounds), cand)

        res = run_branch(trainer, with_order(start, k), max(horizons), trainer.run_epoch, setup=setup)
        for h in horizons:
            out[(k, h)] = branch_numbers(res.reports[h - 1])
    return out


def staged_signature(trainer: Trainer, calls: list[dict]) -> tuple | None:
    """What ``calls`` would commit, as a hashable key (knob -> value, rollback, deltas); None when a call is
    rejected. Two decisions with the same signature train identically."""
    from ..tools.errors import ToolArgumentError
    from ..tools.registry import call_tool, discover

    discover()  # the registry is filled on first use
    scratch = TrainerControls(trainer)
    try:
        for call in calls:
            call_tool(call["name"], scratch, call["args"])
    except ToolArgumentError:
        return None
    # a delta's staged value is a function: name it by the call that made it
    deltas = {
        f"delta:{c['args'].get('layer')}": json.dumps(
            {k: v for k, v in c["args"].items() if k != "reason"}, sort_keys=True, default=str
        )
        for c in calls
        if c["name"] == "propose_weight_delta"
    }
    items = []
    for c in scratch.pending.values():
        if c.key.startswith("delta:"):
            items.append((c.key, deltas.get(c.key, c.key)))
        elif c.key == "rollback":
            items.append((c.key, repr(c.value)))
        elif not _same_value(scratch.current(c.key), c.value):
            items.append((c.key, round(float(c.value), 12)))
    return tuple(sorted(items))


def _same_value(a, b) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return a == b


@dataclass
class BankEntry:
    situation: Situation
    split: str
    monitor: str
    mode: str
    report: dict
    rendered_report: str
    config: dict  # the run's TrainConfig as strings
    candidates: list[dict]  # [{"name", "tool_calls", "signature"}]
    trials: list[dict]  # OutcomeRecord dicts without report / rendered_report / config (hoisted here)
    version: int = BANK_VERSION
    extra: dict = field(default_factory=dict)

    @property
    def horizon(self) -> int:
        """The longest horizon stored: what the primary score uses."""
        return max(t["horizon"] for t in self.trials)

    @property
    def orders(self) -> int:
        return 1 + max(int(t["thread_id"].rsplit("#order", 1)[1]) for t in self.trials)

    def numbers(self, name: str, horizon: int | None = None) -> list[float]:
        """The monitor of candidate ``name`` per data order at ``horizon`` (default the longest); a missing or
        non-finite number (a diverged branch) counts as the worst finite number at the situation."""
        h = horizon or self.horizon
        rows = sorted(
            (t for t in self.trials if t["action"]["name"] == name and t["horizon"] == h),
            key=lambda t: t["thread_id"],
        )
        if not rows:
            raise KeyError(f"candidate {name!r} is not in situation {self.situation.id}")
        return [self._finite(t["with_action"]["monitor"], h) for t in rows]

    def _finite(self, value, horizon: int) -> float:
        if value is not None and math.isfinite(value):
            return float(value)
        finite = [
            t["with_action"]["monitor"]
            for t in self.trials
            if t["horizon"] == horizon and t["with_action"]["monitor"] is not None
        ]
        if not finite:
            return 0.0
        return min(finite) if self.mode == "max" else max(finite)

    def value(self, name: str, horizon: int | None = None) -> float:
        """Mean monitor over data orders, in the monitor's direction (higher is better)."""
        v = statistics.fmean(self.numbers(name, horizon))
        return v if self.mode == "max" else -v

    def candidate_names(self) -> list[str]:
        return [c["name"] for c in self.candidates]

    def records(self) -> list[OutcomeRecord]:
        return [
            OutcomeRecord.from_dict(
                {**t, "report": self.report, "rendered_report": self.rendered_report, "config": self.config}
            )
            for t in self.trials
        ]

    def to_json(self) -> str:
        return json.dumps(_finite(asdict(self)), allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict) -> BankEntry:
        if data.get("version", 0) > BANK_VERSION:
            raise ValueError(
                f"bank entry version={data.get('version')} is newer than this mimic-learn reads "
                f"(1..{BANK_VERSION}); upgrade mimic-learn"
            )
        return cls(**{**data, "situation": Situation(**data["situation"])})


def _finite(value):
    """NaN and infinities become None (JSON has no NaN), as in ``OutcomeRecord.to_dict``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _open(path: Path, mode: str):
    """A bank file for text reading or appending; ``.gz`` files are gzip (a file of gzip members is one gzip)."""
    import gzip

    return gzip.open(path, mode + "t") if path.suffix == ".gz" else path.open(mode)


def load_bank(path: str | Path | None = None, split: str | None = None) -> list[BankEntry]:
    """The bank's entries (default: the shipped bank), optionally one split only."""
    p = Path(path) if path else DEFAULT_BANK
    if not p.exists():
        raise FileNotFoundError(
            f"bank={str(p)!r} does not exist: build it with `mimic-learn build-bank --out {p}`"
        )
    if split is not None and split not in ("train", "dev", "test"):
        raise ValueError(f"split={split!r} is not one of train, dev, test")
    with _open(p, "r") as fh:
        entries = [BankEntry.from_dict(json.loads(line)) for line in fh if line.strip()]
    return [e for e in entries if split is None or e.split == split]


def render_report(trainer: Trainer, situation: Situation) -> tuple[dict, str]:
    """The report a controller sees at the situation, and its rendered prompt text (the ``full`` template),
    taken from one pass of ``rules`` through the real graph."""
    from ..agents.rules import RulesChatModel
    from .score import decide

    snap = trainer.snapshot()
    try:
        result = decide(trainer, situation, RulesChatModel(), prompt="full")
    finally:
        trainer.restore_snapshot(snap)
    return result.report, result.rendered


def build_entry(situation: Situation, orders: int = N_ORDERS) -> BankEntry:
    """Replay the situation and roll out every candidate over ``orders`` data orders at every horizon."""
    trainer = replay(situation)
    report, rendered = render_report(trainer, situation)
    horizons = horizons_for(situation)
    controls = TrainerControls(trainer)
    cands = candidate_actions(controls)
    config = trainer.config.as_params()
    trials, candidates = [], []
    keep = None
    for cand in cands:
        numbers = rollout(trainer, cand.tool_calls, horizons, orders)
        if cand.is_keep:
            keep = numbers
        candidates.append(
            {
                "name": cand.name,
                "tool_calls": cand.tool_calls,
                "signature": [list(x) for x in (staged_signature(trainer, cand.tool_calls) or ())],
            }
        )
        for (k, h), mine in sorted(numbers.items()):
            base = keep[(k, h)]
            mode = report.get("mode", "max")
            record = OutcomeRecord(
                kind="oracle_trial",
                epoch=situation.epoch,
                horizon=h,
                monitor=report.get("monitor", "val_acc"),
                mode=mode,
                action={"name": cand.name, "tool_calls": cand.tool_calls, "changes": []},
                with_action=BranchOutcome(**mine),
                without_action=BranchOutcome(**base),
                effect=effect(mine["monitor"], base["monitor"], mode),
                val_loss_effect=effect(mine["val_loss"], base["val_loss"], "min"),
                report={},
                rendered_report="",
                config=config,
                thread_id=f"{situation.id}#order{k}",
                compute_epochs=h,
                note=f"{h} epochs" if h > 1 else "short-term (1 epoch)",
            ).to_dict()
            for key in ("report", "rendered_report", "config"):
                record.pop(key)
            trials.append(record)
    return BankEntry(
        situation,
        split_of(situation),
        report.get("monitor", "val_acc"),
        report.get("mode", "max"),
        report,
        rendered,
        config,
        candidates,
        trials,
        extra={"compute_epochs": len(cands) * orders * max(horizons) + situation.epoch},
    )


def build_bank(
    situations: list[Situation],
    out: str | Path,
    resume: bool = True,
    orders: int = N_ORDERS,
    progress: Callable[[Situation, bool], None] | None = None,
    executor: str = "local",
) -> int:
    """Build (or, with ``resume``, finish) the bank at ``out``: one line per situation, appended as each is
    done, so an interrupted build loses at most the situation in flight. Returns the number built now."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if resume and path.exists():
        done = {e.situation.id for e in load_bank(path)}
    elif path.exists():
        path.unlink()
    todo = [s for s in situations if s.id not in done]
    for s in situations:
        if s.id in done and progress is not None:
            progress(s, False)
    if executor == "ray":
        import ray

        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
        remote = ray.remote(num_cpus=1)(lambda s: build_entry(s, orders).to_json())
        pending = {remote.remote(s): s for s in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            s = pending.pop(ready[0])
            with _open(path, "a") as fh:
                fh.write(ray.get(ready[0]) + "\n")
            if progress is not None:
                progress(s, True)
        return len(todo)
    if executor != "local":
        raise ValueError(f"executor={executor!r} is not one of local, ray")
    for s in todo:
        line = build_entry(s, orders).to_json()
        with _open(path, "a") as fh:  # one gzip member per line for .gz: appending stays valid
            fh.write(line + "\n")
        if progress is not None:
            progress(s, True)
    return len(todo)


def metric_of(report: dict) -> float | None:
    return metric_value(report, report.get("monitor", "val_acc"))
