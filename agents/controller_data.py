"""Training data for the embedded controller: the example format, its validation, the exact target text, and the
label rule that turns measured outcomes into a target action.

    from mimic_learn.agents.controller_data import load_examples, target_text
    examples = load_examples("controller-train.jsonl")   # clear errors: file, line, field, what is allowed
    target_text(examples[0].target)                      # '{"tool": "set_lr", "args": {"lr": 0.0005, ...}}'

One example (one JSON line, ``schema_version`` 1; docs/reference/controller-training.md):

    {"schema_version": 1,
     "messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}],
     "target": [{"tool": "set_lr", "args": {"lr": 0.0005, "reason": "validation loss flat"}}],
     "source": {...anything: where the example came from...}}

``messages`` are exactly the chat messages llama.cpp receives for the decision (``LocalChatModel.prompt_messages``:
the system prompt with the tool list, then the rendered report); ``target`` is what the controller should call.
The model is trained on ``target_text(target)``: the JSON that local.py's constrained decoding emits, byte for
byte (keys in schema order, ``", "``/``": "`` separators, numbers written out positionally as LLGuidance writes
them: ``0.00001`` not ``1e-05``, ``1`` not ``1.0``), so a trained adapter agrees with the grammar at inference.

The label rule (``label_from_outcomes``): the best action at the longest horizon measured for every action,
*keep* unless the best beats keep by more than ``z`` standard errors of the paired difference across data orders.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION = 1
# LocalChatModel.max_string_chars: the grammar cuts longer strings, so a target may not be longer
MAX_STRING_CHARS = 120


class DatasetFormatError(ValueError):
    """A training file that does not follow the example format; the message names file, line and field."""


class ChatTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class TargetCall(BaseModel):
    """One tool call as the local controller decodes it: ``{"tool": name, "args": {...}}``."""

    model_config = ConfigDict(extra="forbid")
    tool: str = Field(min_length=1)
    args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("args")
    @classmethod
    def _strings_fit_grammar(cls, args: dict[str, Any]) -> dict[str, Any]:
        for key, value in args.items():
            if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
                raise ValueError(
                    f"args.{key} has {len(value)} characters; the decoding grammar allows at most "
                    f"{MAX_STRING_CHARS}, so the model could never produce it"
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"args.{key}={value} is not a finite number (JSON has no NaN/inf)")
        return args


class TrainingExample(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1]
    messages: list[ChatTurn] = Field(min_length=1)
    target: list[TargetCall] = Field(min_length=1)
    source: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _ends_with_user(self) -> TrainingExample:
        if self.messages[-1].role != "user":
            raise ValueError(
                f"messages must end with a user turn (the model answers it); the last role is "
                f"{self.messages[-1].role!r}"
            )
        return self


def load_examples(path: str | Path, max_examples: int | None = None) -> list[TrainingExample]:
    """Read and validate a JSONL file of training examples; raise ``DatasetFormatError`` naming every bad line
    (up to 10) with its field and the rule it breaks. Nothing is returned unless every line is valid."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(f"data={path} does not exist; pass a JSONL file of training examples")
    examples, errors = [], []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                errors.append(f"{path}:{lineno}: not JSON ({exc.msg} at column {exc.colno})")
                continue
            if isinstance(raw, dict) and raw.get("schema_version") != SCHEMA_VERSION:
                errors.append(
                    f"{path}:{lineno}: schema_version={raw.get('schema_version')!r}; this version of "
                    f"mimic-learn reads schema_version {SCHEMA_VERSION}"
                )
                continue
            try:
                examples.append(TrainingExample.model_validate(raw))
            except ValidationError as exc:
                for err in exc.errors():
                    where = ".".join(str(p) for p in err["loc"]) or "(line)"
                    errors.append(f"{path}:{lineno}: {where}: {err['msg']}")
    if errors:
        more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
        raise DatasetFormatError("invalid training data:\n" + "\n".join(errors[:10]) + more)
    if not examples:
        raise DatasetFormatError(f"data={path} holds no examples")
    if max_examples is not None:
        if max_examples < 1:
            raise DatasetFormatError(f"max_examples={max_examples} is out of range [1, inf)")
        examples = examples[:max_examples]
    return examples


def file_sha256(path: str | Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ the target text


def registry_arg_order() -> dict[str, list[str]]:
    """Each registered tool's argument names in its schema's order: the order the grammar makes the model
    write them in."""
    from ..tools.registry import discover

    return {name: list(spec.args.model_fields) for name, spec in discover().items()}


def _json(value: Any) -> str:
    """One JSON value written as LLGuidance's JSON grammar writes it (compact separators, positional numbers)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return np.format_float_positional(value, trim="-")
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(_json(v) for v in value) + "]"
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def target_text(calls: Sequence[TargetCall], arg_order: Mapping[str, Sequence[str]] | None = None) -> str:
    """The exact text local.py's constrained decoding produces for ``calls``: one object for one call, a list
    for several (``max_calls_per_turn > 1``). Arguments follow ``arg_order[tool]`` (default: the registered
    tools' schema order); a tool not in it keeps the order given."""
    order = registry_arg_order() if arg_order is None else arg_order
    objects = []
    for call in calls:
        names = [n for n in order.get(call.tool, []) if n in call.args]
        names += [n for n in call.args if n not in names]
        objects.append({"tool": call.tool, "args": {n: call.args[n] for n in names}})
    return _json(objects[0] if len(objects) == 1 else objects)


# ------------------------------------------------------------------------------------------ the label rule


@dataclass(frozen=True)
class ActionOutcomes:
    """One candidate action's measured outcome: the monitored value per data order, per horizon (epochs after
    the decision; the end of the run is its own number of epochs). Data orders are paired across actions: the
    i-th value of every action used the same data order."""

    action: str
    by_horizon: Mapping[int, Sequence[float]]


@dataclass(frozen=True)
class Label:
    action: str
    horizon: int
    best: str  # the action with the best mean (may be keep, or lose to keep within noise)
    margin: float  # mean paired advantage of ``best`` over keep, in the monitor's units (better > 0)
    stderr: float  # standard error of that paired difference
    beats_keep: bool


def label_from_outcomes(
    outcomes: Sequence[ActionOutcomes],
    keep: str = "keep",
    higher_is_better: bool = True,
    z: float = 2.0,
) -> Label:
    """The target action for one situation: the best mean outcome at the longest horizon that every action
    was measured at, *keep* unless it beats keep by more than ``z`` standard errors of the paired difference
    across data orders (an argmax over noisy outcomes would teach noise; a next-epoch argmax, short-horizon
    bias)."""
    by_name = {o.action: o for o in outcomes}
    if keep not in by_name:
        raise ValueError(f"keep={keep!r} is not among the actions ({', '.join(by_name) or 'none'})")
    if len(by_name) != len(outcomes):
        raise ValueError("each action may appear once in outcomes")
    common = set.intersection(*(set(o.by_horizon) for o in outcomes))
    if not common:
        raise ValueError("no horizon was measured for every action; cannot compare them")
    horizon = max(common)
    values = {name: list(o.by_horizon[horizon]) for name, o in by_name.items()}
    orders = {len(v) for v in values.values()}
    if len(orders) != 1 or min(orders) < 2:
        raise ValueError(
            f"every action needs the same number (>= 2) of data orders at horizon {horizon}; got "
            + ", ".join(f"{k}: {len(v)}" for k, v in values.items())
        )
    if any(not math.isfinite(x) for v in values.values() for x in v):
        raise ValueError(f"outcomes at horizon {horizon} must be finite numbers (score a divergence first)")
    sign = 1.0 if higher_is_better else -1.0
    # max() keeps the first of equal means: list keep first so that a tie is keep
    names = [keep, *[n for n in values if n != keep]]
    best = max(names, key=lambda n: sign * statistics.fmean(values[n]))
    diffs = [sign * (b - k) for b, k in zip(values[best], values[keep], strict=True)]
    margin = statistics.fmean(diffs)
    stderr = statistics.stdev(diffs) / math.sqrt(len(diffs))
    beats = best != keep and margin > z * stderr and margin > 0
    return Label(keep if not beats else best, horizon, best, margin, stderr, beats)
