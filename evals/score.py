"""Scoring a controller on the outcome bank.

    from mimic_learn.evals.score import evaluate
    table = evaluate(["rules", "constant:lr_down", "keep"], split="dev")      # list[ControllerScore]

For every situation the controller reads the situation's report through the real graph (tools, validation,
budget, retries, fallback) on a trainer replayed to that state; its committed decision (the accepted tool calls) is
then rolled out exactly like the candidates, over the same data orders, unless it commits the same change as a
candidate (then the candidate's stored outcome is its outcome). A decision without a valid call scores as keep
and counts as invalid.

Per situation, at the longest stored horizon, with v(a) the monitor averaged over data orders:

    regret    = (v(best) - v(chosen)) / (v(best) - v(worst))  over the candidates (0 when they all tie;
                below 0 when the controller found a value better than every candidate, floored at -1: the
                candidate set can miss the best action — lr x10 in a stall — and one such situation
                would otherwise swing the mean; ``beyond_best`` counts them, ``raw`` is unclipped; above 1
                when it did worse than every candidate, capped at 2 for the same reason — clipping to
                [-1, 2] is symmetric: at most one candidates' spread beyond the best or the worst;
                ``beyond_worst`` counts those)
    raw       = v(best) - v(chosen)  in the monitor's units
    win/harm  = the paired difference chosen - keep across data orders is above / below 0 by more than
                2 standard errors

Rates and means come with a 95% bootstrap interval over situations.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from ..tools.controls import TrainerControls
from ..training.trainer import Trainer
from .bank import DEFAULT_BANK, BankEntry, Situation, load_bank, replay, rollout, staged_signature

ANCHORS = (
    "oracle",
    "keep",
    "random",
    "constant:lr_down",
    "constant:lr_up",
    "constant:lr_up10",
    "constant:dropout_up",
    "constant:wd_up",
    "constant:rollback",
    "rules",
)
REGRET_FLOOR = -1.0  # see score_numbers
REGRET_CEILING = 2.0  # as far beyond the worst candidate as the floor is beyond the best
CONSTANTS = tuple(a for a in ANCHORS if a.startswith("constant:"))


@dataclass
class Decision:
    report: dict
    rendered: str
    calls: list[dict]  # accepted tool calls [{"name", "args"}], in order
    valid: bool
    seconds: float
    tokens: int
    fallbacks: list[str] = field(default_factory=list)


def decide(
    trainer: Trainer, situation: Situation, model, prompt: str = "full", budget: int = 8, tools=None
) -> Decision:
    """One decision of ``model`` through the real graph on the paused ``trainer`` (which the decision changes)."""
    from langchain_core.messages import HumanMessage
    from langgraph.checkpoint.memory import InMemorySaver

    from ..agents.providers import ProviderOptions
    from ..graphs.graph import AgentConfig, build_graph
    from ..graphs.runner import agent_report

    controls = TrainerControls(trainer)
    graph = build_graph(
        controls,
        model,
        AgentConfig(budget=budget, prompt=prompt, tools=tools),
        ProviderOptions(retry_wait=False),
        InMemorySaver(),
    )
    report = agent_report(trainer, trainer.history[-1], situation.total_epochs)
    t0 = time.perf_counter()
    state = graph.invoke(
        {"epoch": trainer.epoch, "report": report},
        {"configurable": {"thread_id": situation.id}, "recursion_limit": 4 * budget + 20},
    )
    wall = time.perf_counter() - t0
    decision = state.get("decision") or {"calls": [], "commit_error": "no decision"}
    accepted = [{"name": c["tool"], "args": c["args"]} for c in decision["calls"] if c["accepted"]]
    fallbacks = list(state.get("fallbacks") or [])
    rendered = next((str(m.content) for m in state.get("messages") or [] if isinstance(m, HumanMessage)), "")
    return Decision(
        report=report,
        rendered=rendered,
        calls=accepted,
        valid=bool(accepted) and not fallbacks and decision.get("commit_error") is None,
        seconds=state.get("decide_seconds", wall),
        tokens=int(state.get("total_tokens", 0) or 0),
        fallbacks=fallbacks,
    )


@dataclass
class SituationScore:
    situation: str
    task: str
    chosen: str  # the candidate it matched, or "other"
    valid: bool
    regret: float
    raw: float
    win: bool
    harm: bool
    seconds: float
    tokens: int
    calls: list[dict] = field(default_factory=list)
    beyond_best: bool = False  # the decision's outcome beat every candidate's (regret < 0 before the floor)
    beyond_worst: bool = False  # it was below every candidate's (regret > 1 before the ceiling)


def paired_verdict(mine: list[float], keep: list[float], mode: str) -> tuple[bool, bool]:
    """(win, harm): the mean paired difference beyond 2 standard errors across data orders."""
    sign = 1.0 if mode == "max" else -1.0
    d = [sign * (a - b) for a, b in zip(mine, keep, strict=True)]
    mean = statistics.fmean(d)
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else 0.0
    return mean > 2 * se and mean > 0, mean < -2 * se and mean < 0


def score_numbers(
    entry: BankEntry, numbers: list[float], chosen: str, decision: Decision | None
) -> SituationScore:
    names = entry.candidate_names()
    values = [entry.value(n) for n in names]
    best, worst = max(values), min(values)
    sign = 1.0 if entry.mode == "max" else -1.0
    mine = sign * statistics.fmean(numbers)
    regret = (best - mine) / (best - worst) if best > worst else 0.0
    # A decision off the candidate set can beat every candidate by many times their spread (the bank's stall
    # situations: lr x10 is not a candidate, and beats lr x3 by 0.4 where the candidates span 0.04, regret
    # -11): one such situation would swing a mean over 24. Normalised regret is floored at -1 ("better than the
    # best by at least the candidates' whole spread"); ``raw`` keeps the unclipped difference and
    # ``beyond_best`` says the decision beat every candidate. The same holds the other way: clipping to the
    # gradient-norm limit 1e-5 on a diverging run scored 36 times the candidates' spread below the worst of
    # them (SmolLM2 with a diagnosis field), so regret is capped at 2 ("worse than the worst by at least the
    # whole spread") and ``beyond_worst`` says the decision was worse than every candidate.
    beyond_best, beyond_worst = mine > best, mine < worst
    regret = min(max(regret, REGRET_FLOOR), REGRET_CEILING)
    win, harm = paired_verdict(numbers, entry.numbers("keep"), entry.mode)
    return SituationScore(
        situation=entry.situation.id,
        task=entry.situation.task,
        chosen=chosen,
        valid=decision.valid if decision else True,
        regret=regret,
        raw=best - mine,
        beyond_best=beyond_best,
        beyond_worst=beyond_worst,
        win=win,
        harm=harm,
        seconds=decision.seconds if decision else 0.0,
        tokens=decision.tokens if decision else 0,
        calls=decision.calls if decision else [],
    )


class Evaluator:
    """Scores controllers situation by situation; replays each situation once and caches the rollouts of
    decisions that match no candidate (keyed by what they commit)."""

    def __init__(self, entries: list[BankEntry], prompt: str | None = None, budget: int = 8, tools=None):
        self.entries = entries
        self.prompt, self.budget, self.tools = prompt, budget, tools
        self._extra: dict[tuple[str, tuple], list[float]] = {}
        self.extra_rollouts = 0

    def score_decision(self, entry: BankEntry, trainer: Trainer, decision: Decision) -> SituationScore:
        calls = decision.calls if decision.valid else []
        sig = staged_signature(trainer, calls) if calls else ()
        # the candidates' own commits, staged on the same state (stored signatures are for reading only)
        by_sig = {staged_signature(trainer, c["tool_calls"]): c["name"] for c in entry.candidates}
        if sig is None or sig == ():
            sig = ()
        name = by_sig.get(sig)
        if sig == ():
            name = "keep"
        if name is not None:
            return score_numbers(entry, entry.numbers(name), name, decision)
        key = (entry.situation.id, sig)
        if key not in self._extra:
            h = entry.horizon
            out = rollout(trainer, calls, [h], entry.orders)
            self._extra[key] = [out[(k, h)]["monitor"] for k in range(entry.orders)]
            self.extra_rollouts += 1
        numbers = [entry._finite(v, entry.horizon) for v in self._extra[key]]
        return score_numbers(entry, numbers, "other", decision)

    def run(
        self,
        controllers: list[str],
        model_path: str | None = None,
        progress=None,
        models: dict | None = None,
        timeout_s: float = 60.0,
    ) -> list[ControllerScore]:
        """Score each controller string on every entry. ``models``: chat model objects to use for some of the
        strings instead of loading them (a benchmark's instrumented local model). ``timeout_s``: a provider's
        request timeout (``--request-timeout``)."""
        from ..agents.providers import ProviderOptions, default_prompt, load_chat_model

        models = dict(models or {})
        for spec in controllers:
            if spec in ("oracle", "keep") or spec.startswith("random") or spec in models:
                continue
            models[spec] = load_chat_model(spec, ProviderOptions(model_path=model_path, timeout_s=timeout_s))
        scores: dict[str, list[SituationScore]] = defaultdict(list)
        rng = random.Random(0)
        for entry in self.entries:
            names = entry.candidate_names()
            values = [entry.value(n) for n in names]
            trainer = None
            for spec in controllers:
                if spec == "oracle":
                    best = max(range(len(names)), key=lambda i: (values[i], -i))
                    scores[spec].append(score_numbers(entry, entry.numbers(names[best]), names[best], None))
                    continue
                if spec.startswith("random"):  # a uniformly random candidate (seeded): the floor
                    pick = rng.choice(names)
                    scores[spec].append(score_numbers(entry, entry.numbers(pick), pick, None))
                    continue
                if spec == "keep":
                    scores[spec].append(score_numbers(entry, entry.numbers("keep"), "keep", None))
                    continue
                if trainer is None:
                    trainer = replay(entry.situation)
                    snap = trainer.snapshot()
                trainer.restore_snapshot(snap)
                prompt = self.prompt or default_prompt(spec, model_path)
                decision = decide(trainer, entry.situation, models[spec], prompt, self.budget, self.tools)
                trainer.restore_snapshot(snap)  # the decision committed; score it from the pre-decision state
                scores[spec].append(self.score_decision(entry, trainer, decision))
            if progress is not None:
                progress(entry)
        return [ControllerScore(spec, scores[spec]) for spec in controllers]


def bootstrap(values: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean over situations."""
    if not values:
        return (math.nan, math.nan)
    arr = np.asarray(values, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(arr), size=(n, len(arr)))
    means = arr[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


@dataclass
class ControllerScore:
    controller: str
    results: list[SituationScore]

    def _metric(self, name: str) -> list[float]:
        return [float(getattr(r, name)) for r in self.results]

    def mean(self, name: str) -> float:
        return statistics.fmean(self._metric(name))

    def interval(self, name: str) -> tuple[float, float]:
        return bootstrap(self._metric(name))

    @property
    def beyond_best(self) -> int:
        """Situations where the decision beat every candidate (its regret is floored at -1 there)."""
        return sum(r.beyond_best for r in self.results)

    @property
    def beyond_worst(self) -> int:
        """Situations where the decision was worse than every candidate (its regret is capped at 2 there)."""
        return sum(r.beyond_worst for r in self.results)

    @property
    def median_seconds(self) -> float:
        return statistics.median(r.seconds for r in self.results)

    @property
    def mean_tokens(self) -> float:
        return statistics.fmean(r.tokens for r in self.results)

    def raw_by_task(self) -> dict[str, float]:
        by = defaultdict(list)
        for r in self.results:
            by[r.task].append(r.raw)
        return {t: statistics.fmean(v) for t, v in sorted(by.items())}

    def summary(self) -> dict:
        out = {"controller": self.controller, "n": len(self.results)}
        for name in ("regret", "win", "harm", "valid"):
            lo, hi = self.interval(name)
            out[name] = self.mean(name)
            out[f"{name}_ci"] = [lo, hi]
        out["beyond_best"], out["beyond_worst"] = self.beyond_best, self.beyond_worst
        out["raw_by_task"] = self.raw_by_task()
        out["median_s"] = self.median_seconds
        out["mean_tokens"] = self.mean_tokens
        return out


def paired_regret_gap(a: ControllerScore, b: ControllerScore) -> tuple[float, tuple[float, float]]:
    """Mean of regret(b) - regret(a) over the same situations and its bootstrap interval: an interval above 0
    means ``a`` beats ``b`` beyond noise."""
    if [r.situation for r in a.results] != [r.situation for r in b.results]:
        raise ValueError("the two scores are not over the same situations")
    gaps = [rb.regret - ra.regret for ra, rb in zip(a.results, b.results, strict=True)]
    return statistics.fmean(gaps), bootstrap(gaps)


def best_constant(scores: list[ControllerScore]) -> ControllerScore:
    constants = [s for s in scores if s.controller.startswith("constant:")]
    if not constants:
        raise ValueError("no constant:<action> controller among the scores")
    return min(constants, key=lambda s: s.mean("regret"))


def evaluate(
    controllers: list[str],
    split: str | None = "dev",
    bank: str | None = None,
    prompt: str | None = None,
    budget: int = 8,
    tools=None,
    model_path: str | None = None,
    progress=None,
) -> list[ControllerScore]:
    entries = load_bank(bank, split)
    if not entries:
        raise ValueError(f"split={split!r} has no situations in bank {bank or DEFAULT_BANK.name}")
    return Evaluator(entries, prompt, budget, tools).run(controllers, model_path, progress)
