"""What a run's records become in MLflow: per-epoch metrics, decisions-table rows, token usage and cost, notes
read back from tags, and a logged run's decisions as a ``scripted:`` controller file. Plain functions over the
runner's outcomes; nothing here talks to the store (``store.py`` does)."""

from __future__ import annotations

import json

from ..training.knobs import report_knobs
from ..training.reports import metric_value
from .tags import NOTE_PREFIX


def epoch_metrics(outcome) -> dict[str, float]:
    r = outcome.report
    metrics = {
        k: getattr(r, k)
        for k in ("train_loss", "train_acc", "val_loss", "val_acc")
        if getattr(r, k) is not None  # a user loop (LoopTrainer) reports the numbers it has
    }
    metrics.update(r.metrics)
    metrics |= {k: v for k, v in report_knobs(r).items() if v is not None}  # every knob of the table
    metrics["epoch_seconds"] = r.wall_time
    metrics["guard_rollbacks"] = getattr(outcome, "guard_rollbacks", 0)
    metrics.update({f"grad_norm/{k}": v for k, v in r.grad_norms.items()})
    metrics.update({f"val_acc_class/{c}": v for c, v in enumerate(r.per_class_val_acc)})
    state = outcome.state
    if state is not None:
        metrics.update(
            {
                "tool_calls": state.get("tool_calls_used", 0),
                "invalid_calls": state.get("invalid_calls", 0),
                "refused_calls": state.get("refused_calls", 0),
                "fallbacks": len(state.get("fallbacks") or []),
                "decision_latency_s": state.get("decide_seconds", 0.0),
                "tokens_in": state.get("tokens_in", 0),
                "tokens_out": state.get("tokens_out", 0),
                "reverted": float(bool(state.get("reverted"))),
            }
        )
        reviews = state.get("reviews") or []
        if reviews:  # --approve: what the human did with this decision's proposals
            for action in ("accept", "edit", "reject"):
                metrics[f"review_{action}s"] = sum(rv["action"] == action for rv in reviews)
    # Counterfactual forks measured at this epoch (graphs/counterfactual.py): the decision's effect vs not acting
    verdicts = getattr(outcome, "counterfactual", None) or []
    effects = [v["effect"] for v in verdicts if v.get("effect") is not None]
    if effects:
        metrics["decision_effect"] = effects[-1]
    if verdicts or getattr(outcome, "shadow_epochs", 0):
        metrics["shadow_epochs"] = outcome.shadow_epochs  # cumulative extra epochs (forks + oracle rollouts)
    oracle = getattr(outcome, "oracle", None)
    if oracle:
        metrics["oracle_candidates"] = len(oracle["candidates"])
        metrics["oracle_horizon"] = oracle["horizon"]
        metrics["oracle_compute_epochs"] = oracle["compute_epochs"]  # candidates x horizon, this decision
    # MLflow stores floats; a NaN loss is kept as NaN (that is the information)
    return {k: float(v) for k, v in metrics.items()}


def decision_rows(outcome) -> list[dict]:
    """One row per tool call (or one row for a decision with none), for the decisions table."""
    d, r = outcome.decision, outcome.report
    if d is None:
        return []
    base = {
        "epoch": r.epoch,
        "reflection": d.get("reflection", ""),
        "val_acc_before": r.val_acc,
        "val_loss_before": r.val_loss,
        "monitor": r.monitor,
        "monitor_before": metric_value(r.to_dict(), r.monitor),
        "changes": json.dumps(d.get("changes", [])),
        "fallbacks": "; ".join(d.get("fallbacks", [])),
        "reverted": bool(d.get("reverted")),
        # counterfactual reflection: the measured effect vs not acting (None: no fork, or not measured yet)
        "decision_effect": (d.get("counterfactual") or {}).get("effect"),
        "final_text": d.get("final_text", ""),
        # the whole decision's provider usage (every model turn of it), repeated on each of its rows
        "tokens_in": int((outcome.state or {}).get("tokens_in", 0)),
        "tokens_out": int((outcome.state or {}).get("tokens_out", 0)),
        "notes": json.dumps(
            [
                {"time": iso_time(n.get("time")), "text": n.get("text"), "source": n.get("source")}
                for n in d.get("notes") or []
            ]
        )
        if d.get("notes")
        else "",
        "review": json.dumps(
            [{k: v for k, v in rv.items() if k != "message_id"} for rv in d.get("reviews") or []], default=str
        )
        if d.get("reviews")
        else "",
    }
    calls = d.get("calls") or [
        {"tool": "", "args": {}, "accepted": False, "reply": "no tool call", "turn": 0}
    ]
    return [
        base
        | {
            "turn": c.get("turn", 0),
            "tool": c.get("tool") or "",
            "arguments": json.dumps(c.get("args"), default=str),
            "accepted": bool(c.get("accepted")),
            "reason": (c.get("args") or {}).get("reason", "") if isinstance(c.get("args"), dict) else "",
            "reply": c.get("reply", ""),
        }
        for c in calls
    ]


def run_usage(outcomes, controller: str, provider=None) -> dict:
    """A run's total provider tokens over its decisions and, where a price is known (``--price-in/--price-out``
    or ``agents.pricing.PRICE_TABLE``), the estimated cost in USD: ``total_tokens_in``, ``total_tokens_out``,
    ``decisions``, and ``estimated_cost_usd`` with ``price`` (where the price came from)."""
    from ..agents.pricing import price_for  # here: agents/__init__ loads the providers

    states = [o.state for o in outcomes if o.state is not None]
    usage: dict = {
        "decisions": len(states),
        "total_tokens_in": sum(int(s.get("tokens_in", 0)) for s in states),
        "total_tokens_out": sum(int(s.get("tokens_out", 0)) for s in states),
    }
    price = price_for(
        controller,
        getattr(provider, "price_in_per_m", None),
        getattr(provider, "price_out_per_m", None),
    )
    if price is not None:
        usage["estimated_cost_usd"] = price.cost_usd(usage["total_tokens_in"], usage["total_tokens_out"])
        usage["price"] = price.describe()
    return usage


def describe_usage(usage: dict) -> str:
    """``run_usage`` as one line: tokens in / out over the decisions, and the estimated cost where known."""
    text = (
        f"tokens: {usage['total_tokens_in']:,} in / {usage['total_tokens_out']:,} out "
        f"over {usage['decisions']} decisions"
    )
    if "estimated_cost_usd" in usage:
        text += f"; estimated cost ${usage['estimated_cost_usd']:.4f} at {usage['price']}"
    return text


def notes_from_tags(tags: dict[str, str]) -> list[dict]:
    """The note records held in a run's ``mimic.note.<unix ms>-<random>`` tags."""
    notes = []
    for key, text in tags.items():
        if key.startswith(NOTE_PREFIX):
            note_id = key.removeprefix(NOTE_PREFIX)
            ms = note_id.split("-")[0]
            when = int(ms) / 1000 if ms.isdigit() else None
            notes.append({"id": note_id, "text": text, "time": when, "source": "mimic-learn note"})
    return notes


def iso_time(when) -> str:
    """A unix time as ISO 8601 in UTC, to the second; '' for anything else."""
    import datetime as dt

    if not isinstance(when, (int, float)):
        return ""
    return dt.datetime.fromtimestamp(when, dt.UTC).isoformat(timespec="seconds")


def as_columns(rows: list[dict]) -> dict[str, list]:
    """Rows (dicts with the first row's keys) as columns, the shape ``mlflow.log_table`` takes."""
    keys = list(rows[0])
    return {k: [row.get(k) for row in rows] for k in keys}


def decisions_to_script(rows: list[dict]) -> dict:
    """A logged run's decisions as a ``scripted:`` file: every tool call, turn by turn, rejected ones too."""
    by_epoch: dict[int, dict[int, list]] = {}
    for row in rows:
        if not row.get("tool"):
            continue
        args = json.loads(row["arguments"]) if row.get("arguments") else {}
        by_epoch.setdefault(int(row["epoch"]), {}).setdefault(int(row.get("turn") or 0), []).append(
            {"name": row["tool"], "args": args}
        )
    return {
        "decisions": [
            {"epoch": epoch, "turns": [turns[t] for t in sorted(turns)]}
            for epoch, turns in sorted(by_epoch.items())
        ]
    }
