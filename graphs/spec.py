"""``RunSpec``: everything one agent run is built from, and its MLflow params both ways.

spec = RunSpec(train=TrainConfig(task="digits", epochs=5), controller="rules")
params = spec.as_params()              # logged with the run
again = spec_from_params(params)       # ``mimic-learn resume`` rebuilds the spec from them
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from ..agents.providers import ProviderOptions
from ..tools.controls import Bounds
from ..training.config import TrainConfig, parse_regime
from .graph import AgentConfig


@dataclass
class RunSpec:
    train: TrainConfig = field(default_factory=TrainConfig)
    controller: str = "rules"  # "none": no agent (a baseline arm)
    agent: AgentConfig = field(default_factory=AgentConfig)
    provider: ProviderOptions = field(default_factory=ProviderOptions)
    bounds: Bounds = field(default_factory=Bounds)
    every: int = 1  # invoke the graph every k epochs
    state_db: str = ".mimic/graph_state.sqlite"
    thread_id: str | None = None  # None: a new id per run
    guard: bool = True  # roll back a non-finite or exploded epoch before the graph runs (agent runs only)
    guard_grad_factor: float = 1e3  # "exploded": total grad norm > this x the previous epoch's
    keep_checkpoint_dir: bool = False  # True: a finished run leaves its train.checkpoint_dir files in place
    # agent.reflection == "counterfactual": epochs the shadow branch of a decision trains (graphs/counterfactual.py)
    counterfactual_horizon: int = 1
    keep_better: bool = False  # counterfactual: continue from the better branch at the horizon

    def __post_init__(self) -> None:
        if self.counterfactual_horizon < 1:
            raise ValueError(
                f"counterfactual_horizon={self.counterfactual_horizon} must be >= 1 (epochs the shadow branch trains)"
            )

    def as_params(self) -> dict[str, str]:
        """Everything ``spec_from_params`` needs to rebuild this spec (``mimic-learn resume``)."""
        params = self.train.as_params()
        params.update(
            controller=self.controller,
            reflection=self.agent.reflection,
            prompt=self.agent.prompt,
            every=str(self.every),
            budget=str(self.agent.budget),
            decision_timeout_s=str(self.agent.decision_timeout_s),
            fallback=str(self.provider.fallback),
            retries=str(self.provider.retries),
            state_db=self.state_db,
            guard=str(self.guard),
            guard_grad_factor=str(self.guard_grad_factor),
            keep_checkpoint_dir=str(self.keep_checkpoint_dir),
            counterfactual_horizon=str(self.counterfactual_horizon),
            keep_better=str(self.keep_better),
            bounds=json.dumps(asdict(self.bounds)),
        )
        if self.agent.instruction:  # in full, as text (MLflow keeps up to PARAM_LIMIT characters of a param)
            params["instruction"] = instruction_param(self.agent.instruction)
        params.update({f"agent.{k}": json.dumps(v) for k, v in _agent_extras(self.agent).items()})
        params.update({f"provider.{k}": json.dumps(v) for k, v in _provider_extras(self.provider).items()})
        return params


_AGENT_IN_PARAMS = ("prompt", "reflection", "budget", "decision_timeout_s", "instruction")
_PROVIDER_IN_PARAMS = ("fallback", "retries")
PARAM_LIMIT = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH (mlflow 3.x)


def instruction_param(text: str) -> str:
    """The instruction as an MLflow param: its full text, cut only beyond MLflow's limit (and then saying so)."""
    if len(text) <= PARAM_LIMIT:
        return text
    tail = f" [... cut: {len(text)} characters, MLflow keeps {PARAM_LIMIT}]"
    return text[: PARAM_LIMIT - len(tail)] + tail


def _agent_extras(agent: AgentConfig) -> dict:
    return {k: v for k, v in asdict(agent).items() if k not in _AGENT_IN_PARAMS}


def _provider_extras(provider: ProviderOptions) -> dict:
    return {k: v for k, v in asdict(provider).items() if k not in _PROVIDER_IN_PARAMS}


def _from_text(text: str, annotation: str):
    """A ``TrainConfig`` field back from its MLflow param string (annotations are strings here)."""
    if text == "None" and "None" in annotation:
        return None
    kind = annotation.split("|")[0].strip()
    if kind == "bool":
        return text == "True"
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    return text


def spec_from_params(
    params: dict[str, str],
    thread_id: str | None = None,
    state_db: str | None = None,
    checkpoint_dir: str | None = None,
) -> RunSpec:
    """The ``RunSpec`` whose ``as_params()`` gave ``params`` (a logged run's MLflow params)."""
    train_kwargs: dict = {}
    for f in fields(TrainConfig):
        if f.name == "extra":
            train_kwargs["extra"] = {
                k.removeprefix("extra."): v for k, v in params.items() if k.startswith("extra.")
            }
        elif f.name == "regime" and "regime" in params:
            train_kwargs["regime"] = parse_regime(params["regime"])
        elif f.name in params:
            train_kwargs[f.name] = _from_text(params[f.name], str(f.type))
    if checkpoint_dir is not None:
        train_kwargs["checkpoint_dir"] = checkpoint_dir
    agent = AgentConfig(
        prompt=params.get("prompt", "full"),
        reflection=params.get("reflection", "log_only"),
        budget=int(params.get("budget", 8)),
        decision_timeout_s=float(params.get("decision_timeout_s", 120.0)),
        instruction=params.get("instruction") or None,
        **{k.removeprefix("agent."): json.loads(v) for k, v in params.items() if k.startswith("agent.")},
    )
    fallback = params.get("fallback", "rules")
    provider = ProviderOptions(
        fallback=None if fallback == "None" else fallback,
        retries=int(params.get("retries", 2)),
        **{
            k.removeprefix("provider."): json.loads(v) for k, v in params.items() if k.startswith("provider.")
        },
    )
    bounds = json.loads(params["bounds"]) if "bounds" in params else {}
    return RunSpec(
        train=TrainConfig(**train_kwargs),
        controller=params.get("controller", "rules"),
        agent=agent,
        provider=provider,
        bounds=Bounds(**{k: tuple(v) if isinstance(v, list) else v for k, v in bounds.items()}),
        every=int(params.get("every", 1)),
        state_db=state_db or params.get("state_db", RunSpec.state_db),
        thread_id=thread_id,
        guard=params.get("guard", "True") == "True",
        guard_grad_factor=float(params.get("guard_grad_factor", 1e3)),
        keep_checkpoint_dir=params.get("keep_checkpoint_dir", "False") == "True",
        counterfactual_horizon=int(params.get("counterfactual_horizon", 1)),
        keep_better=params.get("keep_better", "False") == "True",
    )
