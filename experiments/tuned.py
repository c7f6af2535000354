"""The tuned static baseline: Optuna's TPE over lr / dropout / weight decay, once per regime, on the validation
split of seeds the table does not use; then the ``tuned_static`` arm trains each cell with the best values found.

    mimic-learn tune-static paper --regimes 10,100 --trials 12 --seeds 100,101 --data-dir ../shared/data
    mimic-learn reproduce paper --regimes 10,100 --arms baseline,tuned_static ...

    from mimic_learn.experiments.tuned import TuneOptions, tune_static
    tune_static(TuneOptions("paper", ["100"], trials=3, seeds=[100], task="digits", epochs=2))

Protocol (what the tuned file records and the report states):

* Objective: the mean over the tuning seeds of the **final** epoch's validation accuracy (the validation split
  held out from train; the test split is never read). A diverged run (NaN) scores 0.
* Search space (``SEARCH_SPACES``): lr log-uniform (paper, Adam: 1e-4..1e-2; blog, SGD: 1e-2..0.5), dropout
  uniform 0..0.6 (not searched for a model without dropout, the ResNets), weight decay either 0 or log-uniform
  1e-6..1e-2 (a categorical switch, then the value). Everything else is the experiment's configuration.
* Sampler: ``TPESampler(seed=sampler_seed, n_startup_trials=...)``, its random startup a third of the trials
  (1..10; ``startup_trials``) so that a short study is not all random search. The study lives in an Optuna
  storage (default ``sqlite:///.mimic/tune_static.sqlite``), so an interrupted tuning resumes: finished trials
  count towards ``trials`` and only the rest run.
* Seeds: tuning seeds (default 100, 101) must not be among the table's (``table_seeds``, default 0..99); a
  reproduction refuses a ``tuned_static`` cell whose seed was a tuning seed.
* Compute: ``trial_epochs`` = finished trials x tuning seeds x epochs, and the trials' wall seconds, per regime.

The file (default ``docs/results/<kind>_tuned.json``) holds one entry per regime; tuning more regimes later adds
theirs. A ``tuned_static`` cell whose regime (or task and epochs) the file lacks is reported "not run" with the
command that fixes it (``TunedParamsMissing``), and the sitting goes on.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..training.config import TrainConfig
from .arms import Arm, cell_config, task_for

TUNED_ARM = "tuned_static"
DEFAULT_TUNING_SEEDS = [100, 101]
DEFAULT_TABLE_SEEDS = range(100)  # the seeds tables use; tuning seeds must lie outside them
DEFAULT_STORAGE = "sqlite:///.mimic/tune_static.sqlite"
OBJECTIVE = "mean over the tuning seeds of the final epoch's validation accuracy (never the test split)"
OPTUNA_MISSING = 'tune-static needs Optuna: pip install "mimic-learn[tune]" (or pip install optuna)'


@dataclass(frozen=True)
class SearchSpace:
    """The ranges one experiment's tuning searches; ``weight_decay`` also offers exactly 0."""

    lr: tuple[float, float]
    dropout: tuple[float, float] = (0.0, 0.6)
    weight_decay: tuple[float, float] = (1e-6, 1e-2)


SEARCH_SPACES = {"paper": SearchSpace(lr=(1e-4, 1e-2)), "blog": SearchSpace(lr=(1e-2, 0.5))}


class TunedParamsMissing(ValueError):
    """A ``tuned_static`` cell without tuned values for its regime (or for its task and epochs)."""


def default_tuned_path(kind: str) -> Path:
    return Path("docs/results") / f"{kind}_tuned.json"


@dataclass
class TuneOptions:
    """One tuning: per regime an Optuna study of ``trials`` trials, each trial training every tuning seed.

    ``task`` / ``epochs`` / ``model`` / ``val_size`` / ``data_dir`` / ``threads``: as ``ReproduceOptions``'s
    (the same ``train_config``), so a trial trains exactly what a cell of the table trains."""

    kind: str  # "paper" or "blog"
    regimes: list[str]
    trials: int = 20
    seeds: list[int] = field(default_factory=lambda: list(DEFAULT_TUNING_SEEDS))
    task: str | None = None
    data_dir: str = "data"
    epochs: int | None = None
    threads: int | None = None
    model: str | None = None
    val_size: int | None = None
    out: Path | None = None  # None: docs/results/<kind>_tuned.json
    storage: str = DEFAULT_STORAGE
    sampler_seed: int = 0
    startup_trials: int | None = None  # TPE's random trials before it models (None: trials // 3, 1..10)
    table_seeds: list[int] = field(default_factory=lambda: list(DEFAULT_TABLE_SEEDS))
    command: str = ""
    log_to_mlflow: bool = False  # each trial a child run of the active MLflow run

    @property
    def out_path(self) -> Path:
        return self.out or default_tuned_path(self.kind)

    @property
    def n_startup(self) -> int:
        """TPE's random startup trials: Optuna's default 10 would leave a short study random search."""
        return self.startup_trials if self.startup_trials is not None else min(10, max(1, self.trials // 3))

    @property
    def sampler(self) -> str:
        return f"optuna.samplers.TPESampler(seed={self.sampler_seed}, n_startup_trials={self.n_startup})"


def check_seeds(seeds: list[int], table_seeds: list[int]) -> None:
    """Refuse tuning seeds that a table uses: tuned on them, the baseline would be scored on its own tuning."""
    if not seeds:
        raise ValueError("no tuning seeds: pass --seeds, e.g. --seeds 100,101")
    shared = sorted(set(seeds) & set(table_seeds))
    if shared:
        lo, hi = min(table_seeds), max(table_seeds)
        raise ValueError(
            f"tuning seeds {shared} are among the table's seeds ({lo}..{hi}): tuning must use seeds the table "
            "does not, e.g. --seeds 100,101 (or narrow --table-seeds to the seeds your table uses)"
        )


def base_config(options: TuneOptions, regime: str, seed: int) -> TrainConfig:
    """The TrainConfig a table's cell of ``regime`` and ``seed`` trains (``arms.cell_config``, as ``reproduce``)."""
    task = task_for(options.kind, options.task)
    return cell_config(
        options.kind, task, regime, seed, data_dir=options.data_dir, epochs=options.epochs,
        threads=options.threads, model=options.model, val_size=options.val_size,
    )  # fmt: skip


def has_dropout(train: TrainConfig) -> bool:
    """Whether the configuration's model has dropout layers to set (the ResNets have none)."""
    from ..training.models import DEFAULT_MODEL, build_model, dropout_modules

    return bool(dropout_modules(build_model(train.model or DEFAULT_MODEL[train.task], 10)))


def suggest(trial: Any, space: SearchSpace, dropout: bool) -> dict[str, float]:
    """One trial's values: lr, dropout (when the model has it), weight decay (0, or log-uniform)."""
    params = {"lr": trial.suggest_float("lr", *space.lr, log=True)}
    if dropout:
        params["dropout"] = trial.suggest_float("dropout", *space.dropout)
    use_wd = trial.suggest_categorical("weight_decay_on", [True, False])
    params["weight_decay"] = (
        trial.suggest_float("weight_decay", *space.weight_decay, log=True) if use_wd else 0.0
    )
    return params


def params_of(trial: Any) -> dict[str, float]:
    """A finished trial's values as TrainConfig overrides (weight decay 0 when the switch was off)."""
    out = {"lr": trial.params["lr"]}
    if "dropout" in trial.params:
        out["dropout"] = trial.params["dropout"]
    out["weight_decay"] = trial.params.get("weight_decay", 0.0) if trial.params["weight_decay_on"] else 0.0
    return out


def final_val_acc(train: TrainConfig) -> float:
    """Train ``train`` to its last epoch; that epoch's validation accuracy (0 for a diverged run)."""
    from ..training.trainer import Trainer

    trainer = Trainer.from_config(train)
    report = None
    for _ in range(train.epochs):
        report = trainer.run_epoch()
    value = report.val_acc if report is not None else None
    return 0.0 if value is None or math.isnan(value) else float(value)


def objective(options: TuneOptions, regime: str, space: SearchSpace, dropout: bool) -> Callable:
    """The study's objective: mean final validation accuracy over the tuning seeds (a child run each trial
    when ``log_to_mlflow``)."""

    def score(trial: Any) -> float:
        params = suggest(trial, space, dropout)
        values = [
            final_val_acc(replace(base_config(options, regime, seed), **params)) for seed in options.seeds
        ]
        value = sum(values) / len(values)
        if options.log_to_mlflow:
            import mlflow

            with mlflow.start_run(run_name=f"tune {options.kind}/{regime} trial {trial.number}", nested=True):
                mlflow.set_tags({"mimic.tune": f"{options.kind}/{regime}", "mimic.trial": str(trial.number)})
                mlflow.log_params(params | {"seeds": ",".join(map(str, options.seeds))})
                mlflow.log_metrics({"val_acc_mean": value} | {f"val_acc_s{s}": v for s, v in zip(options.seeds, values, strict=True)})  # fmt: skip
        return value

    return score


def study_name(options: TuneOptions, regime: str, train: TrainConfig) -> str:
    """One study per experiment x task x model x regime x epochs x tuning seeds (what a trial's value means)."""
    seeds = "_".join(map(str, options.seeds))
    return f"tune_static/{options.kind}/{train.task}/{train.model}/{regime}/e{train.epochs}/v{train.val_size}/s{seeds}"


def complete_trials(study: Any) -> list:
    import optuna

    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def tune_regime(options: TuneOptions, regime: str, echo: Callable[[str], None] = print) -> dict:
    """One regime's study (resumed from ``options.storage`` when it exists): run the trials still missing,
    then the best values, the objective, the trials and their compute."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    train = base_config(options, regime, options.seeds[0])
    space, dropout = SEARCH_SPACES[options.kind], has_dropout(train)
    if options.storage.startswith("sqlite:///"):
        Path(options.storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=study_name(options, regime, train), storage=options.storage, direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=options.sampler_seed, n_startup_trials=options.n_startup),
        load_if_exists=True,
    )  # fmt: skip
    done = len(complete_trials(study))
    for n in range(min(done, options.trials)):
        echo(f"skip {options.kind}/{regime} trial {n} (finished in an earlier sitting)")

    def report(study_: Any, trial: Any) -> None:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            values = ", ".join(f"{k} {v:.3g}" for k, v in params_of(trial).items())
            echo(f"done {options.kind}/{regime} trial {trial.number}: val {trial.value:.4f} ({values})")

    study.optimize(
        objective(options, regime, space, dropout), n_trials=max(0, options.trials - done), callbacks=[report]
    )
    trials = complete_trials(study)
    best = max(trials, key=lambda t: t.value)
    return {
        "params": params_of(best),
        "objective_value": best.value,
        "best_trial": best.number,
        "n_trials": len(trials),
        "sampler": options.sampler,
        "tuning_seeds": list(options.seeds),
        "task": train.task,
        "epochs": train.epochs,
        "trial_epochs": len(trials) * len(options.seeds) * train.epochs,
        "wall_s": round(sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials), 1),
        "search_space": {
            "lr": [*space.lr, "log"],
            "dropout": [*space.dropout] if dropout else "not searched (the model has no dropout)",
            "weight_decay": [0, [*space.weight_decay, "log"]],
        },
        "study": study.study_name,
    }


def read_tuned(path: Path) -> dict:
    """A tuned file's contents ({} when there is none)."""
    return json.loads(Path(path).read_text()) if Path(path).is_file() else {}


def write_tuned(options: TuneOptions, results: dict[str, dict]) -> Path:
    """Write (or extend: other regimes' entries are kept) the tuned file of ``options.kind``."""
    path = options.out_path
    existing = read_tuned(path)
    if existing.get("kind") not in (None, options.kind):
        raise ValueError(
            f"{path} holds {existing['kind']!r} tuning, not {options.kind!r}: choose another --out"
        )
    regimes = existing.get("regimes", {}) | results
    for regime in results:
        regimes[regime]["command"] = options.command
    doc = {
        "kind": options.kind,
        "arm": TUNED_ARM,
        "objective": OBJECTIVE,
        "sampler": options.sampler,
        "storage": options.storage,
        "regimes": dict(
            sorted(
                regimes.items(), key=lambda kv: (not kv[0].isdigit(), int(kv[0]) if kv[0].isdigit() else 0)
            )
        ),  # fmt: skip
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def tune_static(options: TuneOptions, echo: Callable[[str], None] = print) -> Path:
    """Tune every regime of ``options`` (one study each, resumable) and write the tuned file; its path.
    With ``log_to_mlflow`` the trials are child runs of one parent run in the active MLflow experiment."""
    check_seeds(options.seeds, options.table_seeds)
    if options.trials < 1:
        raise ValueError(f"trials={options.trials}: run at least one trial")
    if options.kind not in SEARCH_SPACES:
        raise ValueError(f"kind={options.kind!r}: choose paper or blog")
    from ..tracking import parent_run

    results: dict[str, dict] = {}
    with parent_run(f"tune-static {options.kind}") if options.log_to_mlflow else nullcontext():
        for regime in options.regimes:
            start = time.perf_counter()
            results[regime] = tune_regime(options, regime, echo)
            value = results[regime]["objective_value"]
            echo(
                f"{options.kind}/{regime}: best val {value:.4f} in {time.perf_counter() - start:.0f}s this sitting"
            )
    return write_tuned(options, results)


def tuned_compute_note(kind: str, arms: list[Arm], path: Path | None) -> str:
    """The report's line on where ``tuned_static``'s values came from and what tuning them cost ("" when no arm
    is tuned or there is no file): that compute is spent once per regime, before the table, outside its cells."""
    tuned = read_tuned(path or default_tuned_path(kind))
    if not any(is_tuned_arm(a) for a in arms) or not tuned.get("regimes"):
        return ""
    parts = [
        f"{regime}: {r['n_trials']} trials x {len(r['tuning_seeds'])} seeds (tuning seeds "
        f"{', '.join(map(str, r['tuning_seeds']))}) = {r['trial_epochs']} trial-epochs, {r['wall_s'] / 60:.0f} min"
        for regime, r in tuned["regimes"].items()
    ]
    return (
        f"Compute: `tuned_static` trains values tuned once per regime by `mimic-learn tune-static` "
        f"({path or default_tuned_path(kind)}; Optuna TPE on the mean final validation accuracy of seeds disjoint "
        f"from the table's, test never read): {'; '.join(parts)}. That tuning is not in the cells' run time."
    )


# ------------------------------------------------------------------------------------- the tuned_static arm
def is_tuned_arm(arm: Arm) -> bool:
    """The tuned static arm, from any start (``tuned_static@lr_x30`` trains the tuned values all the same)."""
    return arm.name.split("@")[0] == TUNED_ARM


def tuned_params(path: Path, kind: str, regime: str, train: TrainConfig) -> dict[str, float]:
    """The tuned values for a cell of ``regime`` training ``train``; TunedParamsMissing says how to make them,
    ValueError refuses a cell whose seed was a tuning seed."""
    fix = f"run mimic-learn tune-static {kind} --regimes {regime} --task {train.task} --epochs {train.epochs} first"
    entry = read_tuned(path).get("regimes", {}).get(regime)
    if entry is None:
        where = "no tuned file" if not Path(path).is_file() else "no tuned values for this regime in"
        raise TunedParamsMissing(f"{where} {path}; {fix}")
    if (entry.get("task"), entry.get("epochs")) != (train.task, train.epochs):
        raise TunedParamsMissing(
            f"{path} was tuned for task {entry.get('task')}, {entry.get('epochs')} epochs, not {train.task}, "
            f"{train.epochs}; {fix} (with --out another file, then --tuned-file it)"
        )
    if train.seed in entry["tuning_seeds"]:
        raise ValueError(
            f"{TUNED_ARM} {kind}/{regime} seed {train.seed}: a tuning seed of {path} (tuning seeds "
            f"{entry['tuning_seeds']}); a table's seeds must be disjoint from them: choose other --seeds"
        )
    return dict(entry["params"])


def tuned_arm(arm: Arm, kind: str, regime: str, train: TrainConfig, path: Path | None) -> Arm:
    """``arm`` itself, or for ``tuned_static`` the arm with the tuned values as its TrainConfig overrides
    (they replace a mis-tuned start's lr or dropout: the tuned baseline does not depend on the start)."""
    if not is_tuned_arm(arm):
        return arm
    params = tuned_params(path or default_tuned_path(kind), kind, regime, train)
    return replace(arm, train_overrides={**arm.train_overrides, **params})


def explain_untuned(
    missing: dict[str, str], kind: str, train_for: Callable[[str, int], TrainConfig], path: Path | None
) -> dict[str, str]:
    """``missing`` with each ``tuned_static`` cell that is "not run" for want of tuned values saying why and
    the command that fixes it. ``train_for(regime, seed)``: the cell's TrainConfig."""
    out = dict(missing)
    for tag, why in missing.items():
        _, regime, arm, seed = tag.split("/")
        if why != "not run" or arm.split("@")[0] != TUNED_ARM:
            continue
        try:
            tuned_params(path or default_tuned_path(kind), kind, regime, train_for(regime, int(seed[1:])))
        except ValueError as exc:
            out[tag] = str(exc)
    return out
