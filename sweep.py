"""Sweeps of arms x seeds on Ray Tune, one MLflow store for every trial, and Population Based Training (PBT) as the
classical rival of an LLM controller.

    mimic-learn sweep sweep.yaml                      # Ray and an MLflow server started on this machine
    mimic-learn sweep sweep.yaml --address auto --tracking-uri http://<mlflow-host>:5000   # an existing cluster
    mimic-learn reproduce paper --executor ray --arms baseline,rules,pbt                   # the same engine

The spec file (YAML) names a task, a regime (or a list of them), the epochs, the seeds and a list of arms::

    name: controllers-digits        # the sweep's cells are tagged mimic.experiment=<name>; default: file stem
    task: digits                    # digits | mnist | mnist32 | cifar10 | synthetic
    regime: 100                     # or [10, 100]: 'full', a count or a fraction of the train split
    epochs: 6
    seeds: [0, 1, 2]
    data_dir: data                  # relative paths are relative to the spec file
    threads: 1                      # torch threads per trial (default: --cpus-per-trial)
    train: {lr: 0.003}              # any TrainConfig field, for every arm
    arms:
      - {name: rules, controller: rules}
      - {name: replay, controller: "scripted:decisions.yaml", reflection: memory, prompt: full}
      - {name: gpt4o, controller: "openai:gpt-4o", prompt: paper, reflection: log_only, every: 1}
      - {name: gpt4o_careful, controller: "openai:gpt-4o", instruction: "Avoid raising the lr"}
      - {name: baseline, controller: none}
      - {name: plateau, controller: none, train: {schedule: plateau}}
      - {name: pbt, pbt: {population: 4}}     # Ray Tune's PBT over lr / dropout / weight decay

Execution. Every arm x regime x seed is one Ray Tune trial (a function trainable running ``experiments.run_cell``)
with ``--cpus-per-trial`` CPUs and ``--gpus-per-trial`` of a GPU (a fraction such as 0.25 puts four trials on one
GPU); torch in a trial uses as many threads as it has CPUs. Without ``--address``, Ray is started on this machine
(``ray.init(num_cpus=--num-cpus)``, default all cores); with it, the sweep joins that cluster. Tune retries a
failed trial ``--retries`` times (``FailureConfig``); a trial still failing is recorded in MLflow as a FAILED run
with the error in its ``mimic.error`` tag (a run left open by a killed worker is closed the same way), the
sweep goes on, and the report lists the missing cells. Cells already FINISHED in the store are skipped
(``--force`` reruns them), as with ``reproduce``.

MLflow. The sweep is one parent run; every cell is a child run (tag ``mlflow.parentRunId``) in the same
experiment, logged from its trial's process. Without ``--tracking-uri`` the command starts
``mlflow server --host 127.0.0.1`` on a free port over ``sqlite:///mlflow.db`` and trials log over HTTP. A
given ``sqlite:`` store is served the same way while trials run (several processes writing one sqlite file
directly stalled); a server URL is used as is, and a cluster (``--address``) needs one every node reaches.

PBT. A ``pbt`` arm's cell is one Tune experiment of its own: ``population`` members start from lr / dropout /
weight decay drawn from the given ranges (log-uniform, uniform, log-uniform) with the cell's seed (same data
subset and initial weights as every other arm), train one epoch per ``tune.report``, and every
``perturbation_interval`` epochs the bottom quarter copies a top-quarter member's checkpoint (``Trainer.checkpoint``
/ ``restore``) and perturbs its hyperparameters (x1.2 / x0.8, or a resample). The cell's MLflow run is the member
with the best final validation accuracy, with its full lineage (per-epoch metrics of the weights it ended with,
``pbt_lineage.json``) and the whole population (``pbt_population.json``). Compute: a PBT cell costs
``population`` trials; reports say so.

Shared model endpoint for LLM controllers. Trials must not each load a real model: serve it once per node with
an OpenAI-compatible server (vLLM, llama.cpp's ``llama-server``, Ollama) and name it in the arms as
``openai-compatible:<model>@http://127.0.0.1:<port>/v1``; every trial on the node sends its decisions there.
Hosted providers (``openai:gpt-4o``) are shared endpoints already. The embedded ``local`` controller is kept
in-process, loaded once per Ray worker process (trials reuse their worker; measured here: 0.4 s, +214 MB),
because its tool calls come from constrained decoding that an OpenAI-style endpoint does not offer. On this
2-core machine one llama.cpp server (2 slots) answered decision-sized requests at 1.18/s for one client and
1.25/s for two: a served CPU model is no faster than per-worker copies, it saves memory (and, for real models,
load time and the GPU). ``python benchmarks/sweep_scaling.py --endpoint`` measures it.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .training.config import TrainConfig, parse_regime

if TYPE_CHECKING:
    from .experiments import Arm, Cell

# A PBT member's process (restarted at every exploit) imports this module: MLflow, LangGraph and the agents are
# imported where they are used, so that it loads only torch, Ray and the trainer.

log = logging.getLogger(__name__)
RAY_MISSING = 'Ray is not installed: `pip install "mimic-learn[ray]"` (or `pip install "ray[tune]"`)'


# ---------------------------------------------------------------------------------------------- the spec file
class PbtSettings(BaseModel):
    """Population Based Training for one arm: population size, how often to exploit/explore, search ranges."""

    model_config = ConfigDict(extra="forbid")
    population: int = Field(
        4, ge=2, description="members trained side by side; a cell costs this many trials"
    )
    perturbation_interval: int | None = Field(
        None, ge=1, description="epochs between exploit/explore steps (default: epochs // 6, at least 1)"
    )
    lr: tuple[float, float] = (1e-4, 1e-2)
    dropout: tuple[float, float] = (0.0, 0.6)
    weight_decay: tuple[float, float] = (1e-6, 1e-2)

    @field_validator("lr", "weight_decay", "dropout")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not value[0] < value[1]:
            raise ValueError(f"range {list(value)} must be [low, high] with low < high")
        return value

    def interval(self, epochs: int) -> int:
        return self.perturbation_interval or max(1, epochs // 6)


class ArmSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]+$")
    controller: str = "none"  # rules, scripted:<file>, local, openai:<model>, openai-compatible:..., none
    reflection: str = "log_only"
    prompt: str = "full"
    every: int = Field(1, ge=1)
    train: dict[str, Any] = Field(default_factory=dict)
    pbt: PbtSettings | None = None
    instruction: str | None = None  # the user's words for this arm's controller (AgentConfig.instruction)

    @model_validator(mode="after")
    def _pbt_has_no_controller(self) -> ArmSpec:
        if self.pbt is not None and self.controller != "none":
            raise ValueError(f"arm {self.name!r}: a pbt arm has no controller (got {self.controller!r})")
        return self


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]+$")
    task: str = "digits"
    regime: str | int | float | list[str | int | float] = "full"
    epochs: int = Field(5, ge=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    data_dir: str = "data"
    threads: int | None = Field(None, ge=1)
    train: dict[str, Any] = Field(default_factory=dict)
    arms: list[ArmSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_arms(self) -> SweepSpec:
        names = [a.name for a in self.arms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"arm names must be unique; repeated: {', '.join(dupes)}")
        for regime in self.regimes:
            parse_regime(regime)
        return self

    @property
    def regimes(self) -> list[str]:
        values = self.regime if isinstance(self.regime, list) else [self.regime]
        return [str(v) for v in values]

    def arm(self, spec: ArmSpec) -> Arm:
        from .experiments import Arm

        return Arm(
            spec.name,
            None if spec.controller == "none" else spec.controller,
            prompt=spec.prompt,
            reflection=spec.reflection,
            every=spec.every,
            train_overrides=dict(spec.train),
            population=spec.pbt.population if spec.pbt else 0,
        )

    def cells(self, base_dir: Path, threads: int | None, state_dir: Path) -> list[Cell]:
        """Every arm x regime x seed, paths made absolute (a trial's process may run anywhere)."""
        from .agents.providers import ProviderOptions
        from .agents.reflection import get_policy
        from .experiments import Cell
        from .graphs.graph import AgentConfig
        from .graphs.runner import RunSpec
        from .prompts.templates import TEMPLATES

        for arm in self.arms:  # agent settings fail here, not in every trial
            if arm.controller != "none":
                try:
                    get_policy(arm.reflection)
                except ValueError as exc:
                    raise ValueError(f"arm {arm.name!r}: {exc}") from None
                if arm.prompt not in TEMPLATES:
                    raise ValueError(
                        f"arm {arm.name!r}: unknown prompt template {arm.prompt!r}; choose one of {', '.join(TEMPLATES)}"
                    )
        out = []
        for regime in self.regimes:
            for seed in self.seeds:
                for arm_spec_ in self.arms:
                    arm = self.arm(arm_spec_)
                    values = {
                        "task": self.task,
                        "regime": parse_regime(regime),
                        "epochs": self.epochs,
                        "seed": seed,
                        "data_dir": str(_absolute(self.data_dir, base_dir)),
                        "num_threads": self.threads or threads,
                    }
                    values |= self.train | arm.train_overrides
                    try:
                        train = TrainConfig(**values)
                    except TypeError as exc:
                        known = ", ".join(TrainConfig.__dataclass_fields__)
                        raise ValueError(f"arm {arm.name!r}: {exc}; TrainConfig fields are {known}") from None
                    tag = f"{self.name}_{regime}_{arm.name}_s{seed}"
                    out.append(
                        Cell(
                            self.name,
                            regime,
                            seed,
                            arm,
                            RunSpec(
                                train=train,
                                controller=_absolute_controller(arm.controller or "none", base_dir),
                                agent=AgentConfig(
                                    prompt=arm.prompt,
                                    reflection=arm.reflection,
                                    instruction=arm_spec_.instruction,
                                ),
                                provider=ProviderOptions(),
                                every=arm.every,
                                state_db=str(state_dir / f"{tag}.sqlite"),
                            ),
                        )
                    )
        return out


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep spec; a ValueError names what is wrong and where."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sweep spec {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with task, regime, epochs, seeds and arms")
    data.setdefault("name", path.stem)
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{path}: {problems}") from None


def _absolute(path: str, base: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _absolute_controller(controller: str, base: Path) -> str:
    for prefix in ("scripted:", "local:"):
        if controller.startswith(prefix):
            return prefix + str(_absolute(controller.removeprefix(prefix), base))
    return controller


def absolute_tracking_uri(uri: str) -> str:
    """``sqlite:///mlflow.db`` -> ``sqlite:////abs/mlflow.db``: trials must not resolve it in their own folder."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    if "://" not in uri:
        return str(Path(uri).resolve())
    return uri


# ---------------------------------------------------------------------------------------------- services
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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def tracking_server(
    store_uri: str = "sqlite:///mlflow.db",
    host: str = "127.0.0.1",
    port: int | None = None,
    timeout_s: float = 90,
) -> Iterator[str]:
    """``mlflow server`` over ``store_uri`` on ``host``:``port`` (a free one by default) for as long as the block
    runs; yields its URL. Artifacts go to ``mlartifacts/`` beside a sqlite file, served by the server."""
    store_uri = absolute_tracking_uri(store_uri)
    port = port or free_port(host)
    folder = (
        Path(store_uri.removeprefix("sqlite:///")).parent if store_uri.startswith("sqlite:") else Path.cwd()
    )
    log_path = Path(".mimic") / f"mlflow-server-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    mlflow_bin = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    cmd = [
        mlflow_bin, "server", "--host", host, "--port", str(port), "--backend-store-uri", store_uri,
        "--artifacts-destination", str(folder / "mlartifacts"), "--workers", "2",
    ]  # fmt: skip
    url = f"http://{host}:{port}"
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with code {proc.returncode}; its log is {log_path}:\n"
                    + log_path.read_text()[-2000:]
                )
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server did not answer on {url} within {timeout_s:.0f}s; see {log_path}"
                )
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)  # its own session: the server and its workers
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


# ---------------------------------------------------------------------------------------------- trials
@dataclass
class TrialResources:
    cpus: float = 1.0
    gpus: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"cpu": self.cpus, "gpu": self.gpus}


def _cell_trial(config: dict, cells: list[Cell], tracking_uri: str, experiment_id: str, parent_run_id: str):
    """One Ray Tune trial: one cell as an MLflow child run of the sweep's parent run."""
    import mlflow
    from ray import tune

    from .experiments import run_cell

    cell = cells[config["cell"]]
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment_id=experiment_id)
    run_id = run_cell(
        cell.spec, cell.arm, cell.experiment, cell.regime, cell.seed, parent_run_id=parent_run_id
    )
    metrics = mlflow.MlflowClient().get_run(run_id).data.metrics
    tune.report({"test_acc": float(metrics.get("test_acc", float("nan")))})


def _progress_callback(names: Callable[[Any], str], echo: Callable[[str], None]):
    from ray import tune

    class Progress(tune.Callback):
        """One line per finished, retried or failed trial (Tune's own table is switched off)."""

        def __init__(self, names: Callable[[Any], str], echo: Callable[[str], None]) -> None:
            self.names, self.echo = names, echo

        def __getstate__(self) -> dict:  # Tune pickles its run config (to resume); a console does not pickle
            return {"names": self.names}

        def __setstate__(self, state: dict) -> None:
            self.names, self.echo = state["names"], print

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.echo(f"done {self.names(trial)} in {(trial.last_result or {}).get('time_total_s', 0):.0f}s")

        def on_trial_recover(self, iteration, trials, trial, **info):
            self.echo(f"retry {self.names(trial)} (attempt failed; Tune restarts it)")

        def on_trial_error(self, iteration, trials, trial, **info):
            self.echo(f"failed {self.names(trial)}")

    return Progress(names, echo)  # as arguments: the class is pickled by value, and must not capture `echo`


def _error_text(error: BaseException | None) -> str:
    if error is None:
        return ""
    cause = getattr(error, "cause", None) or error  # RayTaskError wraps the trial's own exception
    text = f"{type(cause).__name__}: {cause}"
    return text.strip().splitlines()[-1][:2000] if "Traceback" in text else text[:2000]


def run_cells_on_ray(
    cells: list[Cell],
    resources: TrialResources | None = None,
    retries: int = 1,
    storage_path: str | None = None,
    echo: Callable[[str], None] = print,
    pbt_settings: dict[str, PbtSettings] | None = None,
) -> dict[str, str]:
    """Run ``cells`` as Ray Tune trials under the active MLflow run (the parent); PBT cells run one after the
    other, each as its own population (``pbt_settings`` by arm name; default: the arm's population with the
    default ranges). Failed cells are recorded in the store. Returns {cell tag: error}."""
    import mlflow

    resources = resources or TrialResources()
    parent = mlflow.active_run()
    if parent is None:
        raise RuntimeError("run_cells_on_ray needs an active MLflow run: the sweep's parent run")
    tracking_uri = absolute_tracking_uri(mlflow.get_tracking_uri())
    storage = _storage(storage_path)
    plain = [c for c in cells if not c.arm.population]
    failures: dict[str, str] = {}
    # Trials log over HTTP. Several processes writing one sqlite file directly stalled here (each process's
    # SQLAlchemy pool ran dry waiting for the file lock while metrics and traces were logged asynchronously),
    # so a sqlite store is served by `mlflow server` on 127.0.0.1 while the trials run.
    serve = tracking_uri.startswith("sqlite:") and bool(plain)
    with tracking_server(tracking_uri) if serve else nullcontext(tracking_uri) as trial_uri:
        if plain:
            failures |= _run_trials(plain, resources, retries, storage, echo, trial_uri, parent)
    for cell in cells:
        if cell.arm.population:  # PBT members log nothing themselves: the cell is logged from here
            start = time.perf_counter()
            try:
                settings = (pbt_settings or {}).get(cell.arm.name)
                run_pbt_cell(cell, settings, resources, storage, retries)
                echo(
                    f"done {cell.tag} in {time.perf_counter() - start:.0f}s (PBT, population {cell.arm.population})"
                )
            except Exception as exc:  # the sweep goes on; the store and the report say what failed
                failures[cell.tag] = f"{type(exc).__name__}: {exc}"[:2000]
                echo(f"failed {cell.tag}: {failures[cell.tag]}")
    record_failures(cells, failures, parent.info.experiment_id, parent.info.run_id)
    return failures


def _run_trials(cells, resources, retries, storage, echo, tracking_uri, parent) -> dict[str, str]:
    """Cells of one trial each as one Tune experiment (a grid over their indices); returns {tag: error}."""
    from ray import tune

    tag_of = lambda trial: cells[trial.config["cell"]].tag  # noqa: E731
    trainable = tune.with_resources(
        tune.with_parameters(
            _cell_trial,
            cells=cells,
            tracking_uri=tracking_uri,
            experiment_id=parent.info.experiment_id,
            parent_run_id=parent.info.run_id,
        ),
        resources.as_dict(),
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"cell": tune.grid_search(list(range(len(cells))))},
        tune_config=tune.TuneConfig(
            reuse_actors=True,  # one worker process per slot, not one per trial (imports cost seconds)
            trial_name_creator=lambda t: tag_of(t).replace("/", "_"),
            trial_dirname_creator=lambda t: tag_of(t).replace("/", "_"),
        ),
        run_config=tune.RunConfig(
            name=f"{cells[0].experiment}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=retries),
            callbacks=[_progress_callback(tag_of, echo)],
            verbose=0,
        ),
    )
    return {cells[r.config["cell"]].tag: _error_text(r.error) for r in tuner.fit() if r.error is not None}


def _storage(path: str | None) -> str:
    """Where Tune keeps trial folders and PBT checkpoints: an absolute path, or a URI (s3://, gs://) that every
    node of a cluster reaches (PBT on several nodes needs one)."""
    if path and "://" in path:
        return path
    return str(Path(path or ".mimic/ray_results").resolve())


def record_failures(
    cells: list[Cell], failures: dict[str, str], experiment_id: str, parent_run_id: str
) -> None:
    """Make every failure visible in the store: a run a killed worker left RUNNING is closed as FAILED, and a
    failed cell that never opened a run (it failed before training started) gets a FAILED run with the error."""
    import mlflow
    from mlflow.entities import RunStatus

    from .experiments import cell_tags

    client = mlflow.MlflowClient()
    by_tag = {c.tag: c for c in cells}
    children = client.search_runs(
        [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=50000
    )
    for run in children:
        tag = run.data.tags.get("mimic.cell")
        if run.info.status == "RUNNING" and tag in by_tag:
            why = failures.get(
                tag, "the trial's worker stopped before the run ended (killed or out of memory)"
            )
            client.set_tag(run.info.run_id, "mimic.error", why)
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
    recorded = {r.data.tags.get("mimic.cell") for r in children if r.info.status in ("FAILED", "RUNNING")}
    for tag, error in failures.items():
        if tag in recorded:
            continue
        cell = by_tag[tag]
        tags = cell_tags(cell.experiment, cell.regime, cell.arm.name, cell.seed) | {
            "mlflow.parentRunId": parent_run_id,
            "mimic.role": "child",
            "mimic.arm": f"{cell.arm.name}-{cell.regime}-s{cell.seed}",
            "mimic.error": error,
        }
        run = client.create_run(experiment_id, run_name=tags["mimic.arm"], tags=tags)
        client.log_batch(
            run.info.run_id,
            params=[mlflow.entities.Param(k, v[:6000]) for k, v in cell.spec.as_params().items()],
        )
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))


# ---------------------------------------------------------------------------------------------- PBT
def _clip_config(config: dict, bounds: dict[str, tuple[float, float]]) -> dict:
    """PBT's x1.2 / x0.8 perturbations may leave the search range; keep every value inside it."""
    for key, (low, high) in bounds.items():
        if key in config:
            config[key] = min(max(float(config[key]), low), high)
    return config


def _pbt_member(config: dict, train: TrainConfig, interval: int) -> None:
    """One PBT member: trains epoch by epoch, reports validation accuracy, checkpoints every ``interval`` epochs;
    after an exploit it continues from the copied member's checkpoint with its own (perturbed) hyperparameters."""
    import torch
    from ray import tune

    from .training.trainer import Trainer

    knobs = {k: config[k] for k in ("lr", "dropout", "weight_decay") if k in config}
    trainer = Trainer.from_config(replace(train, **knobs))
    lineage: list[dict] = []
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = Trainer.load_checkpoint(Path(folder) / "member.pt")
        trainer.restore(state["trainer"])
        lineage = list(state["lineage"])
        trainer.set_lr(knobs["lr"])
        trainer.set_weight_decay(knobs["weight_decay"])
        if "dropout" in knobs:
            trainer.set_dropout(knobs["dropout"])
    if not lineage or any(abs(lineage[-1][k] - v) > 1e-15 for k, v in knobs.items()):
        lineage.append({"epoch": trainer.epoch, **knobs})
    while trainer.epoch < train.epochs:
        report = trainer.run_epoch()
        metrics = {"val_acc": report.val_acc, "val_loss": report.val_loss, "epoch": trainer.epoch}
        last = trainer.epoch == train.epochs
        if not (last or trainer.epoch % interval == 0):
            tune.report(metrics)
            continue
        state = {"trainer": trainer.checkpoint(), "lineage": lineage}
        if last:
            test = trainer.test()
            state["test"] = {"acc": test.acc, "loss": test.loss}
            metrics["test_acc"] = test.acc
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / "member.pt")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _has_dropout(train: TrainConfig) -> bool:
    from .training.models import DEFAULT_MODEL, build_model, dropout_modules

    return bool(dropout_modules(build_model(train.model or DEFAULT_MODEL[train.task], 10, train.dropout)))


def run_pbt_cell(
    cell: Cell,
    settings: PbtSettings | None = None,
    resources: TrialResources | None = None,
    storage_path: str | None = None,
    retries: int = 1,
) -> str:
    """One PBT cell: a population trained with Ray Tune's PBT scheduler, logged as one child run of the active
    MLflow run (the best member by final validation accuracy). Starts Ray here if none is running."""
    import mlflow
    import numpy as np
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    from . import tracking
    from .experiments import cell_tags
    from .training.trainer import EpochReport, Trainer

    parent = mlflow.active_run()
    if parent is None:
        raise RuntimeError(
            "run_pbt_cell logs the cell as a child of the active MLflow run; start the parent first"
        )
    settings = settings or PbtSettings(population=cell.arm.population or 4)
    resources = resources or TrialResources()
    train = cell.spec.train
    if train.num_threads is None:
        train = replace(train, num_threads=max(1, int(resources.cpus)))
    interval = settings.interval(train.epochs)
    bounds = {"lr": settings.lr, "weight_decay": settings.weight_decay}
    if _has_dropout(train):
        bounds["dropout"] = settings.dropout
    space = {k: (tune.uniform(*v) if k == "dropout" else tune.loguniform(*v)) for k, v in bounds.items()}
    scheduler = PopulationBasedTraining(
        time_attr="training_iteration",
        perturbation_interval=interval,
        hyperparam_mutations=space,
        custom_explore_fn=functools.partial(_clip_config, bounds=bounds),
    )
    # The initial population and PBT's random choices follow the cell's seed; Tune runs members
    # asynchronously, so two sittings can still differ in when a member exploits another.
    random.seed(cell.seed)
    np.random.seed(cell.seed)
    started = start_ray()
    storage = _storage(storage_path)
    t0 = time.time()
    try:
        tuner = tune.Tuner(
            tune.with_resources(
                tune.with_parameters(_pbt_member, train=train, interval=interval), resources.as_dict()
            ),
            param_space=space,
            tune_config=tune.TuneConfig(
                metric="val_acc",
                mode="max",
                scheduler=scheduler,
                num_samples=settings.population,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=f"{cell.tag.replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=storage,
                failure_config=tune.FailureConfig(max_failures=retries),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=4),
                verbose=0,
            ),
        )
        grid = tuner.fit()
    finally:
        if started:
            import ray

            ray.shutdown()
    done = [
        r
        for r in grid
        if r.error is None and r.checkpoint is not None and r.metrics.get("test_acc") is not None
    ]
    if not done:
        errors = "; ".join(_error_text(r.error) for r in grid if r.error is not None)
        raise RuntimeError(f"no PBT member of {cell.tag} finished ({errors or 'no checkpoint'})")
    best = max(done, key=lambda r: r.metrics["val_acc"])
    with best.checkpoint.as_directory() as folder:
        state = Trainer.load_checkpoint(Path(folder) / "member.pt")
    population = [
        {
            "member": r.path.rsplit("/", 1)[-1] if r.path else "",
            "final_config": {k: r.config.get(k) for k in bounds},
            "final_val_acc": r.metrics.get("val_acc"),
            "test_acc": r.metrics.get("test_acc"),
            "error": _error_text(r.error),
        }
        for r in grid
    ]
    tags = cell_tags(cell.experiment, cell.regime, cell.arm.name, cell.seed) | {
        "mimic.role": "child",
        "mimic.arm": f"{cell.arm.name}-{cell.regime}-s{cell.seed}",
        "mimic.pbt.population": str(settings.population),
        "mimic.compute_trials": str(settings.population),
    }
    tags["mlflow.parentRunId"] = parent.info.run_id
    # Opened now, dated from when the population started: the run's duration is the cell's wall time.
    created = mlflow.MlflowClient().create_run(
        parent.info.experiment_id, start_time=int(t0 * 1000), tags=tags, run_name=tags["mimic.arm"]
    )
    with mlflow.start_run(run_id=created.info.run_id, nested=True) as run:
        mlflow.set_tags(tracking.version_tags() | tags)
        params = cell.spec.as_params() | {
            "pbt.population": str(settings.population),
            "pbt.perturbation_interval": str(interval),
            **{f"pbt.range.{k}": str(list(v)) for k, v in bounds.items()},
        }
        mlflow.log_params(params)
        from types import SimpleNamespace

        reports = state["trainer"]["history"]
        for row in reports:
            outcome = SimpleNamespace(report=EpochReport(**row), state=None, guard_rollbacks=0)
            mlflow.log_metrics(tracking.epoch_metrics(outcome), step=row["epoch"])
        mlflow.log_metrics(
            {
                "test_acc": state["test"]["acc"],
                "test_loss": state["test"]["loss"],
                "pbt_wall_s": time.time() - t0,
            }
        )
        mlflow.log_dict({"lineage": state["lineage"]}, "pbt_lineage.json")
        mlflow.log_dict({"members": population}, "pbt_population.json")
        tracking.log_plots({tags["mimic.arm"]: reports})
    return run.info.run_id


# ---------------------------------------------------------------------------------------------- the sweep
def write_sweep_report(
    spec: SweepSpec, data: dict, arms: list[Arm], missing: dict[str, str], header: list[str], out: Path
) -> Path:
    """Markdown: per regime, one row per arm (mean ± std over seeds, paired Δ test vs the first arm, tool use)."""
    from .experiments import _fmt_ms, _plot_curves, arm_row_cells, missing_section, pbt_compute_note

    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# Sweep `{spec.name}`", "", *header, ""]
    if any(a.population for a in arms):
        lines += [pbt_compute_note(arms, data), ""]
    base = arms[0].name
    for regime in spec.regimes:
        cells = data.get(regime, {})
        lines += [f"## Regime {regime} ({spec.epochs} epochs, task {spec.task})", ""]
        if not cells:
            lines += ["No finished cells.", ""]
            continue
        lines += [
            f"| arm | controller | seeds | final val | best val | test | Δ test vs {base} (95% CI) | tool calls (accepted) | fallbacks | knobs changed |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        base_test = {s: c["test"] for s, c in cells.get(base, {}).items()}
        for arm in arms:
            seeds = cells.get(arm.name)
            controller = f"PBT x{arm.population}" if arm.population else (arm.controller or "none")
            if not seeds:
                lines.append(f"| {arm.name} | `{controller}` | 0 | — | — | — | — | — | — | — |")
                continue
            col = lambda k, seeds=seeds: [c[k] for c in seeds.values()]  # noqa: E731
            shared = arm_row_cells(arm, seeds, base_test, base, reference="(reference)")
            row = [
                arm.name,
                f"`{controller}`",
                str(len(seeds)),
                _fmt_ms(col("final_val")),
                _fmt_ms(col("best_val")),
                _fmt_ms(col("test")),
                shared["delta"],
                shared["tool_use"],
                shared["fallbacks"],
                shared["knobs"],
            ]
            lines.append("| " + " | ".join(row) + " |")
        plot = _plot_curves(data, regime, out.parent / out.stem)
        lines += ["", f"![validation accuracy, regime {regime}]({plot.relative_to(out.parent)})", ""]
    lines += missing_section(missing)
    out.write_text("\n".join(lines) + "\n")
    return out


@dataclass
class SweepOutcome:
    parent_run_id: str
    ran: list[str]
    skipped: list[str]
    failed: dict[str, str]
    missing: dict[str, str]
    report: Path


def run_sweep(
    spec: SweepSpec,
    base_dir: Path,
    tracking_uri: str,
    mlflow_experiment: str | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    resources: TrialResources | None = None,
    retries: int = 1,
    force: bool = False,
    out: Path | None = None,
    storage_path: str | None = None,
    command: str = "",
    echo: Callable[[str], None] = print,
) -> SweepOutcome:
    """Every missing cell of ``spec`` as a Ray Tune trial under one MLflow parent run, then the report."""
    import mlflow

    from . import tracking
    from .experiments import collect, finished_cells, missing_cells

    resources = resources or TrialResources()
    tracking.setup(absolute_tracking_uri(tracking_uri), mlflow_experiment or f"mimic-sweep-{spec.name}")
    state_dir = Path(".mimic/sweeps").resolve() / spec.name
    cells = spec.cells(base_dir, max(1, int(resources.cpus)), state_dir)
    done = finished_cells(spec.name)
    pending = [c for c in cells if force or c.tag not in done]
    skipped = [c.tag for c in cells if not force and c.tag in done]
    for tag in skipped:
        echo(f"skip {tag} (finished in run {done[tag].info.run_id[:8]})")
    started = start_ray(address, num_cpus) if pending else False
    start = time.perf_counter()
    try:
        if pending:
            import ray

            total = ray.cluster_resources()
            echo(
                f"sweep {spec.name}: {len(pending)} trials on Ray ({total.get('CPU', 0):.0f} CPUs, "
                f"{total.get('GPU', 0):.0f} GPUs; {resources.cpus:g} CPU / {resources.gpus:g} GPU per trial)"
            )
        with mlflow.start_run(run_name=f"sweep {spec.name}") as parent:
            mlflow.set_tags(tracking.version_tags() | {"mimic.role": "parent", "mimic.sweep": spec.name})
            mlflow.log_params(
                {
                    "task": spec.task,
                    "regimes": ",".join(spec.regimes),
                    "epochs": str(spec.epochs),
                    "seeds": ",".join(map(str, spec.seeds)),
                    "arms": ",".join(a.name for a in spec.arms),
                    "cpus_per_trial": str(resources.cpus),
                    "gpus_per_trial": str(resources.gpus),
                    "ray_address": address or "local",
                }
            )
            mlflow.log_dict(spec.model_dump(mode="json"), "sweep.yaml")
            pbt = {a.name: a.pbt for a in spec.arms if a.pbt is not None}
            failed = run_cells_on_ray(pending, resources, retries, storage_path, echo, pbt) if pending else {}
            wall = time.perf_counter() - start
            finished = finished_cells(spec.name)
            arms = [spec.arm(a) for a in spec.arms]
            data = collect(finished, spec.name, spec.regimes, arms)
            missing = missing_cells(spec.name, spec.regimes, arms, spec.seeds, finished)
            header = [
                f"Command: `{command}`" if command else "",
                "",
                f"Ray: {'cluster ' + address if address else 'started on this machine'}; {resources.cpus:g} CPU and "
                f"{resources.gpus:g} GPU per trial. Wall time of this sitting: {wall / 60:.1f} min "
                f"({len(pending)} trials run, {len(skipped)} cells reused from the MLflow store, {len(failed)} failed).",
                "",
                f"MLflow: parent run `{parent.info.run_id}`, experiment `{mlflow_experiment or f'mimic-sweep-{spec.name}'}`.",
            ]
            report = write_sweep_report(
                spec, data, arms, missing, header, out or Path(f"docs/results/{spec.name}.md")
            )
            mlflow.log_artifact(str(report), artifact_path="report")
            mlflow.set_tag("mimic.missing_cells", str(len(missing)))
    finally:
        if started:
            import ray

            ray.shutdown()
    return SweepOutcome(parent.info.run_id, [c.tag for c in pending], skipped, failed, missing, report)


def ray_executor(
    address: str | None = None,
    num_cpus: int | None = None,
    resources: TrialResources | None = None,
    retries: int = 1,
    echo: Callable[[str], None] = print,
) -> Callable[[list[Cell]], dict[str, str]]:
    """``reproduce(run_cells=...)``: run a reproduction's cells as Ray Tune trials."""

    def run(cells: list[Cell]) -> dict[str, str]:
        resources_ = resources or TrialResources()
        threads = max(1, int(resources_.cpus))
        cells = [
            replace(
                c,
                spec=replace(
                    c.spec, train=replace(c.spec.train, num_threads=c.spec.train.num_threads or threads)
                ),
            )
            for c in cells
        ]
        state_dir = Path(".mimic/sweeps").resolve() / cells[0].experiment
        cells = [
            replace(
                c,
                spec=replace(
                    c.spec,
                    state_db=str(state_dir / f"{c.tag.replace('/', '_')}.sqlite"),
                    train=replace(c.spec.train, data_dir=str(Path(c.spec.train.data_dir).resolve())),
                    controller=_absolute_controller(c.spec.controller, Path.cwd()),
                ),
            )
            for c in cells
        ]
        started = start_ray(address, num_cpus)
        try:
            return run_cells_on_ray(cells, resources_, retries, None, echo)
        finally:
            if started:
                import ray

                ray.shutdown()

    return run
