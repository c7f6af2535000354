"""Training examples for the embedded controller from the outcome bank: what the controller sees, and the action
that measured best.

    from mimic_learn.evals.bank import load_bank
    from mimic_learn.evals.training_data import bank_examples
    examples = bank_examples(load_bank(split="train"))     # JSON-ready dicts, controller_data's format

For each situation the trainer is replayed to its boundary (``bank.replay``), the real graph renders the report
with the controller's prompt (default ``compact``, what ``local`` and ``local:adapter=`` use) and the chat
messages are built exactly as llama.cpp receives them (``LocalChatModel.prompt_messages``, rollback offered, as it
is to a model with an adapter). The target is the candidate that ``controller_data.label_from_outcomes`` picks at
the longest stored horizon: *keep* unless the best beats keep by more than two standard errors of the paired
difference across data orders. Knob values are snapped to the decoding grammar's grid (``local.candidate_values``);
a target the grammar cannot express is left out and counted in ``skipped``.

Only the bank's *train* split should be passed here: dev chooses, test is reported once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..agents.controller_data import SCHEMA_VERSION, ActionOutcomes, Label, label_from_outcomes
from ..agents.rules import RulesChatModel
from ..tools.controls import TrainerControls
from ..tools.registry import as_langchain_tools
from ..training.knobs import multiplicative
from .bank import BankEntry, replay
from .score import decide

KEEP_REASON = "no action beats keep beyond noise"


class _RecordingRules(RulesChatModel):
    """``rules`` that remembers the first messages it was asked to answer (the graph's rendered decision turn)."""

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        if not getattr(self, "_seen", None):
            object.__setattr__(self, "_seen", list(messages))
        return super()._generate(messages, stop, run_manager, **kwargs)


@dataclass
class BankExamples:
    examples: list[dict] = field(default_factory=list)
    labels: dict[str, Label] = field(default_factory=dict)  # situation id -> label
    skipped: dict[str, str] = field(default_factory=dict)  # situation id -> why


def label_entry(entry: BankEntry) -> Label:
    """The target action of one bank situation (longest stored horizon, keep unless beyond noise)."""
    outcomes = [
        ActionOutcomes(name, {entry.horizon: entry.numbers(name)}) for name in entry.candidate_names()
    ]
    return label_from_outcomes(outcomes, higher_is_better=entry.mode == "max")


def _snap(call: dict, live: dict) -> dict | None:
    """The call with each knob argument moved onto the grammar's grid; None if a value is not on it."""
    from ..agents.local import candidate_values

    args = dict(call["args"])
    for arg, (low, high, current) in live.get(call["name"], {}).items():
        grid = candidate_values(low, high, current, multiplicative=multiplicative(arg))
        near = [v for v in grid if math.isclose(v, float(args.get(arg, math.nan)), rel_tol=1e-6)]
        if not near:
            return None
        args[arg] = near[0]
    return {"tool": call["name"], "args": args}


def _target(entry: BankEntry, label: Label, live: dict) -> list[dict] | None:
    if label.action == "keep":
        return [{"tool": "keep_current", "args": {"reason": KEEP_REASON}}]
    cand = next(c for c in entry.candidates if c["name"] == label.action)
    reason = f"{label.action}: best measured outcome"
    calls = [
        _snap({"name": c["name"], "args": {**c["args"], "reason": reason}}, live) for c in cand["tool_calls"]
    ]
    return None if any(c is None for c in calls) else calls


def bank_examples(entries: Iterable[BankEntry], prompt: str = "compact", budget: int = 8) -> BankExamples:
    """One training example per situation whose target the grammar can express (see the module docstring)."""
    from ..agents.local import LocalChatModel

    model = LocalChatModel()  # what the built-in model with an adapter (its default) sees: rollback offered
    out = BankExamples()
    for entry in entries:
        sid = entry.situation.id
        label = label_entry(entry)
        out.labels[sid] = label
        trainer = replay(entry.situation)
        recorder = _RecordingRules()
        snap = trainer.snapshot()
        try:
            decide(trainer, entry.situation, recorder, prompt=prompt, budget=budget)
        finally:
            trainer.restore_snapshot(snap)  # decide() committed rules' change; bounds are read before it
        seen = getattr(recorder, "_seen", None)
        if not seen:
            out.skipped[sid] = "the graph asked no decision (guarded epoch)"
            continue
        tools = as_langchain_tools(TrainerControls(trainer))
        live = {t.name: t.live_bounds() for t in tools}
        target = _target(entry, label, live)
        if target is None:
            out.skipped[sid] = f"{label.action} is not on the decoding grammar's grid"
            continue
        out.examples.append(
            {
                "schema_version": SCHEMA_VERSION,
                "messages": model.prompt_messages(seen, tools),
                "target": target,
                "source": {
                    "situation": sid,
                    "split": entry.split,
                    "labeller": "outcomes",
                    "label": label.action,
                    "horizon": label.horizon,
                    "margin": label.margin,
                    "stderr": label.stderr,
                    "prompt": prompt,
                },
            }
        )
    return out


# ------------------------------------------------------------------ examples from the scenario bank + rules


def rules_situations(
    variants: int = 3, seed: int = 0, prompt: str = "compact", budget: int = 8
) -> Iterator[tuple]:
    """Training examples (as dicts) whose targets are the ``rules`` controller's decision on perturbed copies of
    evals/scenarios.py's situations, rendered exactly as the built-in local controller sees them.

    Variant 0 of each scenario is the bank's own; the others scale its losses by x0.75-1.3, shift accuracies
    by +-0.03 and move lr by x0.5 / x2. Calls the grammar cannot express (``rollback``, withheld for the
    built-in model; a value off the live candidate grid) are dropped; a decision left without calls is
    skipped. ``source`` records scenario, variant and labeller. For proving the training pipeline; the real
    training data comes from measured outcomes (``label_from_outcomes``).

    Yields (example dict, the graph's LangChain messages, the bound tools): the last two let an evaluation run
    the real controller on the same situation."""
    import random

    from langchain_core.messages import SystemMessage

    from ..agents.local import LocalChatModel
    from ..agents.protocol import human_with_report
    from ..agents.rules import rules_decision
    from ..graphs.runner import agent_report
    from ..prompts.templates import render, system_prompt
    from .scenarios import bank, scenario_trainer

    rng = random.Random(seed)
    model = LocalChatModel(adapter_path="none")  # the bare built-in model's view: rollback withheld
    for scenario in bank():
        for variant in range(variants):
            s = _perturbed(scenario, rng) if variant else scenario
            trainer = scenario_trainer(s)
            tools = as_langchain_tools(TrainerControls(trainer))
            report = agent_report(trainer, trainer.history[-1], s.total_epochs)
            report["previous_decision"] = None
            messages = [
                SystemMessage(system_prompt(budget)),
                human_with_report(render(prompt, report), report),
            ]
            grammar_tools = {t["function"]["name"] for t in model.bind_tools(tools).kwargs["tools"]}
            live = {t.name: t.live_bounds() for t in tools}
            # calls the grammar cannot express (a withheld tool, a value off the grid) are dropped
            snapped = [_snap(c, live) for c in rules_decision(report) if c["name"] in grammar_tools]
            calls = [c for c in snapped if c is not None]
            if not calls:
                continue
            example = {
                "schema_version": SCHEMA_VERSION,
                "messages": model.prompt_messages(messages, tools),
                "target": calls[: model.max_calls_per_turn],
                "source": {
                    "scenario": scenario.name,
                    "variant": variant,
                    "labeller": "rules",
                    "prompt": prompt,
                },
            }
            yield example, messages, tools


def _perturbed(scenario, rng):
    """A copy of ``scenario`` with losses x0.75-1.3, accuracies +-0.03 and lr x0.5 / x1 / x2."""
    import dataclasses

    loss_scale = rng.uniform(0.75, 1.3)
    shift = rng.uniform(-0.03, 0.03)
    history = [
        (tl * loss_scale, vl * loss_scale, min(1.0, max(0.0, ta + shift)), min(1.0, max(0.0, va + shift)))
        for tl, vl, ta, va in scenario.history
    ]
    return dataclasses.replace(scenario, history=history, lr=scenario.lr * rng.choice([0.5, 1.0, 2.0]))


def rules_examples(variants: int = 3, seed: int = 0, prompt: str = "compact", budget: int = 8) -> list[dict]:
    """``rules_situations``' examples only (JSON-ready dicts)."""
    return [example for example, _, _ in rules_situations(variants, seed, prompt, budget)]
