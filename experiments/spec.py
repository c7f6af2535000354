"""The sweep spec file (YAML): a task, a regime (or a list of them), the epochs, the seeds and a list of arms::

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

An arm entry is an ``arms.Arm`` (the type the reproductions' arms are), so it also takes ``tools`` (the tools
bound for its controller) and ``start`` (a mis-tuned start, as ``reproduce --start``). How a sweep runs:
``sweep.py``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..training.config import TrainConfig, parse_regime
from .arms import Arm, arm_spec
from .cells import Cell


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
    arms: list[Arm] = Field(min_length=1)

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

    def check_agents(self) -> None:
        """Unknown reflection policies and prompt templates fail here, not in every trial."""
        from ..agents.reflection import get_policy
        from ..prompts.templates import TEMPLATES

        for arm in self.arms:
            if arm.controller is None:
                continue
            try:
                get_policy(arm.reflection)
            except ValueError as exc:
                raise ValueError(f"arm {arm.name!r}: {exc}") from None
            if arm.prompt not in TEMPLATES:
                raise ValueError(
                    f"arm {arm.name!r}: unknown prompt template {arm.prompt!r}; choose one of {', '.join(TEMPLATES)}"
                )

    def train_config(
        self, arm: Arm, regime: str, seed: int, base_dir: Path, threads: int | None
    ) -> TrainConfig:
        """One cell's TrainConfig: the spec's settings, then its ``train``, then the arm's overrides."""
        values = {
            "task": self.task,
            "regime": parse_regime(regime),
            "epochs": self.epochs,
            "seed": seed,
            "data_dir": str(absolute_path(self.data_dir, base_dir)),
            "num_threads": self.threads or threads,
        }
        values |= self.train | arm.train_overrides
        try:
            return TrainConfig(**values)
        except TypeError as exc:
            known = ", ".join(TrainConfig.__dataclass_fields__)
            raise ValueError(f"arm {arm.name!r}: {exc}; TrainConfig fields are {known}") from None

    def cells(self, base_dir: Path, threads: int | None, state_dir: Path) -> list[Cell]:
        """Every arm x regime x seed, paths made absolute (a trial's process may run anywhere)."""
        from ..agents.providers import ProviderOptions

        self.check_agents()
        out = []
        for regime in self.regimes:
            for seed in self.seeds:
                for arm in self.arms:
                    train = self.train_config(arm, regime, seed, base_dir, threads)
                    state_db = state_dir / f"{self.name}_{regime}_{arm.name}_s{seed}.sqlite"
                    # "LLM" has no meaning in a spec: the arm's controller is used as written
                    spec = arm_spec(arm, train, arm.controller or "none", str(state_db), ProviderOptions())
                    spec = replace(spec, controller=absolute_controller(spec.controller, base_dir))
                    out.append(Cell(self.name, regime, seed, arm, spec))
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


def absolute_path(path: str, base: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def absolute_controller(controller: str, base: Path) -> str:
    """A controller naming a file (``scripted:<file>``, ``local:<gguf>``) with that file's absolute path."""
    for prefix in ("scripted:", "local:"):
        if controller.startswith(prefix):
            return prefix + str(absolute_path(controller.removeprefix(prefix), base))
    return controller
