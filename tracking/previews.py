"""One-line previews of a decision trace for MLflow's Traces list: the Input column (``report_preview``: epoch,
monitored metric and its best, knobs) and the Output column (``decision_preview``: what changed, what was
rejected, the reflection). The full graph state stays in the spans."""

from __future__ import annotations

from ..tools.controls import KNOBS
from ..training.reports import metric_value

PREVIEW_REFLECTION_CHARS = 160


def format_number(value: float | None, digits: int = 3) -> str:
    """``digits`` significant digits, or ``n/a`` for a missing value."""
    return "n/a" if value is None else f"{value:.{digits}g}"


def report_preview(report: dict, history: list[dict]) -> str:
    """One line for a decision trace's Input column: ``epoch 53 · val acc 0.970 (best 0.972) · lr 0.01 ·
    dropout 0.2``. ``history`` is the run's epoch reports up to this one (the best is over them)."""
    monitor = report.get("monitor") or "val_acc"
    value = metric_value(report, monitor)
    seen = [v for v in (metric_value(r, monitor) for r in history) if v is not None]
    best = (min if report.get("mode") == "min" else max)(seen) if seen else None
    shown = "n/a" if value is None else f"{value:.3f}"
    parts = [f"epoch {report['epoch']}", f"{monitor.replace('_', ' ')} {shown}"]
    if best is not None:
        parts[-1] += f" (best {best:.3f})"
    parts.append(f"lr {format_number(report.get('lr'))}")
    if report.get("dropout") is not None:
        parts.append(f"dropout {format_number(report['dropout'], 2)}")
    if report.get("weight_decay"):
        parts.append(f"wd {format_number(report['weight_decay'], 2)}")
    if report.get("alpha"):
        parts.append(f"alpha {format_number(report['alpha'], 2)}")
    return " · ".join(parts)


def decision_preview(decision: dict, before: dict[str, float | None]) -> str:
    """One line for a decision trace's Output column: ``set_lr 0.01→0.002 ✓ · set_dropout ✗ · 7 refused ·
    reflection: …``. ``before`` holds the knob values when the decision started."""
    parts = []
    for change in decision.get("changes") or []:
        key, tool = change["key"], change.get("tool") or change["key"]
        if key in KNOBS:
            parts.append(f"{tool} {format_number(before.get(key))}→{change['value']} ✓")
        else:
            parts.append(f"{tool} {change['value']} ✓" if key != "rollback" else f"{tool} ✓")
    calls = decision.get("calls") or []
    refused = sum(not c["accepted"] and str(c.get("reply", "")).startswith("refused") for c in calls)
    rejected: dict[str, int] = {}
    for c in calls:
        if not c["accepted"] and not str(c.get("reply", "")).startswith("refused"):
            rejected[str(c["tool"])] = rejected.get(str(c["tool"]), 0) + 1
    parts += [f"{tool} ✗" + (f"×{n}" if n > 1 else "") for tool, n in rejected.items()]
    if refused:
        parts.append(f"{refused} refused")
    if not decision.get("changes"):
        parts.insert(0, "no change")
    if decision.get("reverted"):
        parts.append("reverted the previous decision")
    if decision.get("fallbacks"):
        parts.append(f"{len(decision['fallbacks'])} fallback(s)")
    if decision.get("commit_error"):
        parts.append(f"commit failed: {decision['commit_error'][:80]}")
    reflection = " ".join(str(decision.get("reflection") or "").split())
    if reflection:
        cut = reflection[:PREVIEW_REFLECTION_CHARS]
        parts.append("reflection: " + cut + ("…" if len(reflection) > len(cut) else ""))
    return " · ".join(parts)
