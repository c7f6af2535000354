"""An arm: one way to run a cell (a controller with its prompt, reflection and tools, a schedule, or Population
Based Training). The two reproductions' arms are defined here; a sweep spec's ``arms:`` entries are the same type.

    from mimic_learn.experiments import Arm, arm_spec
    arm = Arm("careful", "rules", reflection="memory", train_overrides={"lr": 0.003})
    spec = arm_spec(arm, TrainConfig(task="digits"), "local", "state.sqlite", ProviderOptions())   # a RunSpec

``controller`` is None for an arm without an agent, ``"LLM"`` for "the controller chosen on the command line"
(the reproductions), or a controller name (``rules``, ``scripted:<file>``, ``openai:gpt-4o``, ...).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.dataclasses import dataclass

from ..agents.providers import ProviderOptions
from ..graphs.graph import AgentConfig
from ..graphs.runner import RunSpec
from ..training.config import TrainConfig
from .published import PAPER_EPOCHS


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


# Mis-tuned starts (--start): configurations a user gets wrong, to measure how much of the gap to the published
# (well-tuned) start each arm recovers. Each maps the experiment's TrainConfig to the start.
START_VARIANTS = {
    "published": lambda t: t,
    "lr_x30": lambda t: replace(t, lr=t.lr * 30),
    "lr_div100": lambda t: replace(t, lr=t.lr / 100),
    "dropout_0.7": lambda t: replace(t, dropout=0.7),
}


# populate_by_name: ``train_overrides`` is ``train:`` in a sweep spec, and both spellings construct an arm.
@dataclass(config=ConfigDict(extra="forbid", populate_by_name=True))
class Arm:
    # an arm run from a mis-tuned start is named <arm>@<start> (at_start)
    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]+(@[A-Za-z0-9_.+-]+)?$")
    controller: str | None = (
        None  # None (or "none" in a spec): no agent; "LLM": the command line's controller
    )
    prompt: str = "full"
    reflection: str = "log_only"
    every: int = Field(1, ge=1)
    train_overrides: dict[str, Any] = Field(default_factory=dict, alias="train")  # TrainConfig fields
    paper_key: str | None = None  # which published column to show beside it
    # Population Based Training (Ray Tune's PBT over lr / dropout / weight decay) instead of one run; a cell
    # costs ``pbt.population`` runs' worth of compute (see pbt.py).
    pbt: PbtSettings | None = None
    # The tools bound for the controller (AgentConfig.tools; None: every registered tool). Matched action
    # spaces: PAPER_TOOLS / BLOG_TOOLS, what the published controllers could change.
    tools: tuple[str, ...] | None = None
    start: str = "published"  # a START_VARIANTS key: the configuration the cell starts from
    instruction: str | None = None  # the user's words for this arm's controller (AgentConfig.instruction)

    @field_validator("controller", mode="before")
    @classmethod
    def _none_is_no_controller(cls, value: Any) -> Any:
        return None if value == "none" else value

    @field_validator("start")
    @classmethod
    def _known_start(cls, value: str) -> str:
        if value not in START_VARIANTS:
            raise ValueError(f"start={value!r}: choose from {', '.join(START_VARIANTS)}")
        return value

    @model_validator(mode="after")
    def _pbt_has_no_controller(self) -> Arm:
        if self.pbt is not None and self.controller is not None:
            raise ValueError(f"arm {self.name!r}: a pbt arm has no controller (got {self.controller!r})")
        return self

    @property
    def population(self) -> int:
        """PBT members per cell; 0: one run."""
        return self.pbt.population if self.pbt is not None else 0


# What the published controllers could change. The paper's JSON: lr, dropout, alpha and a weight delta (no
# weight decay); the blog's regex: the learning rate only. keep_current is the explicit no-op, so a
# controller can decline to act with a tool call as well as without one.
PAPER_TOOLS = ("set_lr", "set_dropout", "set_alpha", "propose_weight_delta", "keep_current")
BLOG_TOOLS = ("set_lr", "keep_current")


def at_start(arms: list[Arm], starts: list[str]) -> list[Arm]:
    """Every arm from every start; an arm from a start other than "published" is named ``<arm>@<start>``."""
    unknown = [s for s in starts if s not in START_VARIANTS]
    if unknown:
        raise ValueError(f"start={unknown}: choose from {', '.join(START_VARIANTS)}")
    return [
        arm if start == "published" else replace(arm, name=f"{arm.name}@{start}", start=start)
        for start in starts
        for arm in arms
    ]


PAPER_ARMS = [
    Arm("baseline", None, paper_key="baseline"),
    Arm(
        "llm_paper_log_only", "LLM", prompt="paper", reflection="log_only", paper_key="llm", tools=PAPER_TOOLS
    ),
    Arm("llm_paper_memory", "LLM", prompt="paper", reflection="memory", tools=PAPER_TOOLS),
    Arm("llm_paper_revert", "LLM", prompt="paper", reflection="revert_on_harm", tools=PAPER_TOOLS),
    Arm("rules", "rules"),
    Arm("reduce_on_plateau", None, train_overrides={"schedule": "plateau"}),
]

# The classical rival a practitioner would pick instead of an LLM controller. Not in the default arm lists
# (it needs Ray: `pip install "mimic-learn[ray]"`); name it with --arms ...,pbt. Reports show it whenever the
# store has its cells.
PBT_ARM = Arm("pbt", None, pbt=PbtSettings(population=4))

BLOG_ARMS = [
    Arm("steplr", None, paper_key="steplr"),
    Arm("every3_losses", "LLM", prompt="losses", every=3, paper_key="every3_losses", tools=BLOG_TOOLS),
    Arm("every5_losses", "LLM", prompt="losses", every=5, paper_key="every5_losses", tools=BLOG_TOOLS),
    Arm("losses", "LLM", prompt="losses", paper_key="losses", tools=BLOG_TOOLS),
    Arm(
        "losses+lr_history",
        "LLM",
        prompt="losses+lr_history",
        paper_key="losses+lr_history",
        tools=BLOG_TOOLS,
    ),
    Arm(
        "losses+grad_norms",
        "LLM",
        prompt="losses+grad_norms",
        paper_key="losses+grad_norms",
        tools=BLOG_TOOLS,
    ),
    Arm("losses+per_class", "LLM", prompt="losses+per_class", paper_key="losses+per_class", tools=BLOG_TOOLS),
    Arm("full_memory", "LLM", prompt="full", reflection="memory", tools=BLOG_TOOLS),
    Arm("full_revert", "LLM", prompt="full", reflection="revert_on_harm", tools=BLOG_TOOLS),
    Arm("onecycle", None, train_overrides={"schedule": "onecycle"}),
]

# The shipped trained controller (agents/adapters/smollm2-bank-v1: SmolLM2-135M + a LoRA adapter trained on the
# outcome bank's train split), on the prompt it was trained on (compact) and the matched tools.
ADAPTER_CONTROLLER = "local:adapter=smollm2-bank-v1"
# The default local controller since 2026-12-03 (SmolLM2 + smollm2-bank-v2, trained on bank v2's train split),
# named explicitly so that its cells keep their meaning if the default changes again.
ADAPTER_V2_CONTROLLER = "local:adapter=smollm2-bank-v2"

# Defined, not in the default lists (name them with --arms): a cosine schedule, the trained controller, the random
# floor and the greedy oracle references (agents/oracle.py: candidates x horizon shadow epochs per decision), on
# the matched tools; and the arms derived from other arms' cells (derived_arms.py): constant_policy (the primary
# LLM arm's most frequent call, held constant; its controller is filled in when it runs), constant_adapter (the
# same for llm_adapter) and placebo (the primary LLM arm's controller and prompt, reading another seed's baseline
# metrics).
OPTIONAL_ARMS: dict[str, list[Arm]] = {
    kind: [
        Arm("cosine", None, train_overrides={"schedule": "cosine"}),
        Arm("tuned_static", None),  # its lr / dropout / weight decay: the tuned file (experiments/tuned.py)
        Arm("llm_adapter", ADAPTER_CONTROLLER, prompt="compact", tools=tools),
        Arm("llm_adapter_v2", ADAPTER_V2_CONTROLLER, prompt="compact", tools=tools),
        Arm("random", "random", tools=tools),
        Arm("oracle_end", "oracle:end", tools=tools),
        Arm("oracle_1", "oracle:1", tools=tools),
        Arm("constant_policy", "constant:derived", tools=tools),
        Arm("constant_adapter", "constant:derived", tools=tools),
        Arm("placebo", "LLM", prompt={"paper": "paper", "blog": "losses"}[kind], tools=tools),
    ]
    for kind, tools in (("paper", PAPER_TOOLS), ("blog", BLOG_TOOLS))
}


def default_arms(kind: str) -> list[Arm]:
    """The published arms of ``kind`` ("paper" or "blog"): what ``reproduce`` runs without --arms."""
    return list(PAPER_ARMS if kind == "paper" else BLOG_ARMS)


def known_arms(kind: str) -> list[Arm]:
    """Every arm ``reproduce`` can run for ``kind``: the published ones, then the optional ones (--arms)."""
    return [*default_arms(kind), *OPTIONAL_ARMS.get(kind, []), PBT_ARM]


def resolve_arms(kind: str, arm_names: list[str] | None) -> list[Arm]:
    """The arms named (in the order ``known_arms`` lists them), or the published ones; unknown names raise."""
    known = known_arms(kind)
    unknown = set(arm_names or []) - {a.name for a in known}
    if unknown:
        raise ValueError(f"unknown arms {sorted(unknown)}; choose from {', '.join(a.name for a in known)}")
    return [a for a in known if a.name in arm_names] if arm_names else default_arms(kind)


def task_for(kind: str, task: str | None = None) -> str:
    """The task a ``kind`` experiment's cells train: ``task`` (a --task override), else the published one."""
    return task or ("mnist" if kind == "paper" else "cifar10")


def paper_config(
    regime: str, seed: int, data_dir: str, epochs: int | None, threads: int | None
) -> TrainConfig:
    return TrainConfig(
        task="mnist", regime=regime, epochs=epochs or PAPER_EPOCHS[regime], optimizer="adam", lr=1e-3, dropout=0.2,
        batch_size=64, seed=seed, data_dir=data_dir, num_threads=threads,
    )  # fmt: skip


def blog_config(
    task: str, regime: str, seed: int, data_dir: str, epochs: int, threads: int | None
) -> TrainConfig:
    return TrainConfig(
        task=task, regime=regime, epochs=epochs, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3,
        schedule="step", step_size=5, gamma=0.1, batch_size=128, seed=seed, data_dir=data_dir, num_threads=threads,
        augment=task == "cifar10", model="resnet18_cifar",
    )  # fmt: skip


def cell_config(
    kind: str,
    task: str,
    regime: str,
    seed: int,
    *,
    data_dir: str,
    epochs: int | None = None,
    threads: int | None = None,
    model: str | None = None,
    val_size: int | None = None,
    fixed_subset: bool = False,
) -> TrainConfig:
    """The TrainConfig one cell of ``kind`` ("paper"/"blog") trains on ``task`` at ``regime`` and ``seed``, with
    the model, validation-split and subset overrides (a table's cells and tune-static's trials both use it)."""
    if kind == "paper":
        train = replace(paper_config(regime, seed, data_dir, epochs, threads), task=task)
        if task != "mnist":
            train = replace(train, model=None, val_size=None)
    else:
        train = blog_config(task, regime, seed, data_dir, epochs or 20, threads)
    if model is not None:
        train = replace(train, model=model)
    if val_size is not None:
        train = replace(train, val_size=val_size)
    if fixed_subset:
        train = replace(train, data_seed=0)
    return train


def chosen_controller(arm: Arm, controller: str) -> str:
    """The controller an arm's cells run: "none", the command line's ``controller`` for "LLM", or its own."""
    if arm.controller is None:
        return "none"
    return controller if arm.controller == "LLM" else arm.controller


def arm_spec(
    arm: Arm, train: TrainConfig, controller: str, state_db: str, provider: ProviderOptions
) -> RunSpec:
    """One cell's run: ``train`` from the arm's start with its overrides, its controller and agent settings."""
    train = replace(START_VARIANTS[arm.start](train), **arm.train_overrides)
    return RunSpec(
        train=train,
        controller=chosen_controller(arm, controller),
        agent=AgentConfig(
            prompt=arm.prompt,
            reflection=arm.reflection,
            tools=list(arm.tools) if arm.tools else None,
            instruction=arm.instruction,
        ),
        provider=provider,
        every=arm.every,
        state_db=state_db,
    )
