"""The Markdown report of a reproduction: per regime, one row per arm (mean ± SD over seeds, the paired Δ vs the
first arm with its simultaneous interval, Holm-adjusted p and TOST verdict, tool use, compute, the published
numbers), then plots. Built from ``collect``'s shape, so from the MLflow store or from a per-cell file alike:
the same data gives the same bytes.

The per-arm cells shared with sweep reports (``arm_row_cells``) and the sections both kinds of report end with
(``missing_section``, ``pbt_compute_note``) are public here; ``sweep.py`` uses them.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from .arms import Arm
from .published import BLOG_NOTES, BLOG_TABLE, PAPER_NOTES, PAPER_TABLE
from .stats import compare_arms, detectable_effect, fmt_mean_sd, margin_for, paired_diff


def plot_curves(data: dict, regime: str, out: Path) -> Path:
    """Mean validation accuracy per epoch of every arm in ``regime`` (over seeds), one figure in ``out``."""
    from ..tracking.plots import plot_run

    arms = {}
    for arm, seeds in data.get(regime, {}).items():
        curves = [c["val_curve"] for c in seeds.values() if c["val_curve"]]
        n = min(len(c) for c in curves) if curves else 0
        arms[arm] = [{"epoch": i + 1, "val_acc": statistics.fmean(c[i] for c in curves)} for i in range(n)]
    folder = out / f"plots_{regime}"
    paths = plot_run(arms, folder, panels=("val_acc",))
    return paths[0]


def arm_row_cells(
    arm: Arm,
    seeds: dict[int, dict],
    base_test: dict[int, float],
    base_name: str,
    scale: float = 1.0,
    reference: str = "(baseline)",
) -> dict[str, str]:
    """The per-arm cells every report shows (reproductions and sweeps alike): the paired Δ test vs the reference
    arm with its 95% interval, tool calls (accepted), fallbacks and the knobs that changed (``none`` makes an
    arm that never acted visible). ``scale`` 100 shows percentage points with two decimals."""
    col = lambda k: [c[k] for c in seeds.values()]  # noqa: E731
    diff, half, n = paired_diff({s: c["test"] for s, c in seeds.items()}, base_test)
    places = 4 if scale == 1.0 else 2
    if arm.name == base_name:
        delta = reference
    elif n == 0:
        delta = "—"
    else:
        ci = "n/a" if math.isnan(half) else f"± {half * scale:.{places}f}"
        delta = f"{diff * scale:+.{places}f} {ci} (n={n})"
    agent = arm.controller is not None
    knobs = sorted(set().union(*[set(k) for k in col("knobs")])) or ["none"]
    return {
        "delta": delta,
        "tool_use": f"{sum(col('calls')):.0f} ({sum(col('accepted')):.0f})" if agent else "—",
        "fallbacks": f"{sum(col('fallbacks')):.0f}" if agent else "—",
        "knobs": ", ".join(knobs),
    }


def starts_note(arms: list[Arm], base_arm: str) -> list[str]:
    """How arms from mis-tuned starts are compared (nothing when every arm starts as published)."""
    if all(arm.start == "published" for arm in arms):
        return []
    return [
        f"An arm run from a mis-tuned start (`<arm>@<start>`) is compared with that start's {base_arm}",
        f"(`{base_arm}@<start>`), and each start is a family of its own for the interval and Holm: how far the",
        "start falls below the published one is the start's gap, given with the share each arm recovers.",
    ]


def report_preamble(
    kind: str, data: dict, regimes: list[str], arms: list[Arm], header: list[str], proxy_note: str
) -> list[str]:
    """Title, the caller's header, compute and published-number notes, and the statistics paragraph."""
    base_arm = arms[0].name
    lines = [f"# {'Paper' if kind == 'paper' else 'Blog'} experiment, reproduced", "", *header, ""]
    if proxy_note:
        lines += [f"> {proxy_note}", ""]
    if any(arm.population for arm in arms):
        lines += [pbt_compute_note(arms, data), ""]
    lines += PAPER_NOTES if kind == "paper" else BLOG_NOTES
    margins = ", ".join(f"{r}: ±{margin_for(r) * 100:g} pt" for r in regimes)
    return lines + [
        "Statistics (experiments/stats.py): spread is mean ± SD over seeds (sample SD, not a standard error).",
        f"Δ = arm − {base_arm} on the test set, paired by seed (same subset, initial weights and seed per arm);",
        "the interval is simultaneous over the arms of a regime (95% family-wise, Bonferroni), p is the paired t",
        "test's, Holm-adjusted across those arms. Verdict: better/worse when Holm p < 0.05, else equivalent when",
        f"the Holm-adjusted TOST against the regime's margin rejects ({margins}), else inconclusive.",
        "Holm's step-down is less strict than Bonferroni for all but the smallest p, so a 'better' verdict can",
        "sit beside an interval that still reaches 0: read such a row as a weak result.",
        *starts_note(arms, base_arm),
        subset_policy(data),
        "With few seeds the smallest detectable effect is large, so",
        '"inconclusive" and a wide interval mean absence of evidence, not evidence of no effect.',
        "",
    ]


def _stat_cells(arm: Arm, base_arm: str, compared: dict, scale: float, places: int) -> list[str]:
    """Δ [simultaneous CI], Holm p and verdict of one arm's row (``base_arm``: its start's baseline)."""
    if arm.name == base_arm:
        return ["(baseline)" if arm.start == "published" else f"(baseline of start {arm.start})", "—", "—"]
    if arm.name not in compared:
        return ["— (no seed shared with the baseline)", "—", "—"]
    c = compared[arm.name]
    ci = "n/a" if math.isnan(c.low) else f"[{c.low * scale:+.{places}f}, {c.high * scale:+.{places}f}]"
    p = "n/a" if math.isnan(c.p_holm) else "<0.001" if c.p_holm < 0.001 else f"{c.p_holm:.3f}"
    return [f"{c.mean * scale:+.{places}f} {ci} (n={c.n})", p, c.verdict]


def arm_row(
    kind: str, regime: str, arm: Arm, seeds: dict[int, dict], base: dict, base_arm: str, compared: dict
) -> str:
    """One arm's finished row of a regime's table."""
    scale, places = (1.0, 4) if kind == "paper" else (100.0, 2)
    col = lambda k: [c[k] for c in seeds.values()]  # noqa: E731
    shared = arm_row_cells(arm, seeds, base, base_arm, scale)
    per_seed = ", ".join(f"{c['test'] * scale:.{places}f}" for _, c in sorted(seeds.items()))
    compute = (
        f"{sum(col('decisions')):.0f} / {sum(col('tokens_in')):,.0f}, {sum(col('tokens_out')):,.0f} / "
        f"{sum(col('seconds')) / 60:.1f}"
    )
    ran_on = ", ".join(sorted({c.get("ran_on") or "?" for c in seeds.values()}))
    row = [arm.name, str(len(seeds)), fmt_mean_sd(col("final_val")), fmt_mean_sd(col("best_val"))]
    row.append(fmt_mean_sd(col("test"), scale))
    if kind == "paper":
        row.append(fmt_mean_sd(col("train")))
    row += [per_seed, *_stat_cells(arm, base_arm, compared, scale, places)]
    row += [shared["tool_use"], shared["fallbacks"], shared["knobs"], compute, ran_on]
    if kind == "paper":
        published = PAPER_TABLE.get(regime, {}).get(arm.paper_key or "", None)
        row.append(" / ".join(f"{x:.4f}" for x in published) if published else "")
    else:
        row.append(f"{BLOG_TABLE[arm.paper_key]:.2f}" if arm.paper_key in BLOG_TABLE else "")
    return "| " + " | ".join(row) + " |"


def start_families(arms: list[Arm], base_arm: str) -> dict[str, tuple[str, list[Arm]]]:
    """The arms of each start with the baseline they are compared with: the published start's arms against
    ``base_arm``, a mis-tuned start's (``<arm>@<start>``) against ``<base_arm>@<start>``, which begins from the
    same wrong configuration. Each start is its own Holm family: "does acting recover from lr x30" and "does
    acting help from the published start" are separate questions, and the start's own gap (its baseline
    against the published one) is a property of the start, not of an arm (the recovery lines report it)."""
    families: dict[str, tuple[str, list[Arm]]] = {}
    for arm in arms:
        base = base_arm if arm.start == "published" else f"{base_arm}@{arm.start}"
        families.setdefault(arm.start, (base, []))[1].append(arm)
    return families


def regime_table(
    kind: str, regime: str, cells: dict, arms: list[Arm], missing: dict[str, str]
) -> tuple[list[str], dict]:
    """A regime's table (header, one row per arm, "not run" rows with why) and the arms' comparisons."""
    base_arm = arms[0].name
    margin = margin_for(regime) * 100
    families = start_families(arms, base_arm)
    versus = f"{base_arm} (same start)" if len(families) > 1 else base_arm
    stat_cols = f"Δ test vs {versus} [95% simultaneous CI] | p (Holm) | verdict (TOST ±{margin:g} pt)"
    tail = (
        "tool calls (accepted) | fallbacks | knobs changed | decisions / tokens in, out / wall min | ran on"
    )
    if kind == "paper":
        head = f"| arm | seeds | final val | best val | test | train | per-seed test | {stat_cols} | {tail} | paper final / max / train |"
    else:
        head = f"| arm | seeds | final val | best val | test % | per-seed test % | {stat_cols} | {tail} | blog test % |"
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    tests = {name: {s: c["test"] for s, c in seeds.items()} for name, seeds in cells.items()}
    compared: dict = {}
    for family_base, members in families.values():
        family = {a.name: tests[a.name] for a in members if a.name != family_base and cells.get(a.name)}
        compared |= compare_arms(family, tests.get(family_base, {}), regime)
    width = head.count(" | ") + 1
    for arm in arms:
        seeds = cells.get(arm.name)
        if seeds:
            family_base = families[arm.start][0]
            lines.append(arm_row(kind, regime, arm, seeds, tests.get(family_base, {}), family_base, compared))
            continue
        # a reason already saying "not run: ..." is not wrapped in a second "not run (...)"
        why = sorted(
            {
                w.removeprefix("not run: ")
                for t, w in missing.items()
                if t.split("/")[1:3] == [regime, arm.name]
            }
        )
        lines.append(
            f"| {arm.name} | 0 | not run ({'; '.join(why) or 'not in this run'}) |" + " — |" * (width - 3)
        )
    return lines, compared


def regime_figures(kind: str, regime: str, data: dict, arms: list[Arm], out: Path) -> list[str]:
    """The strip plot of test accuracy per seed, and mean validation curves where they are known."""
    from ..tracking.plots import plot_strip

    scale = 1.0 if kind == "paper" else 100.0
    cells = data.get(regime, {})
    strip = plot_strip(
        {
            a.name: [c["test"] * scale for _, c in sorted(cells[a.name].items())]
            for a in arms
            if cells.get(a.name)
        },
        out.parent / out.stem / f"strip_{regime}.png",
        "test accuracy" + (" (%)" if scale == 100.0 else ""),
    )
    lines = ["", f"![test accuracy per seed, regime {regime}]({strip.relative_to(out.parent)})"]
    if any(c.get("val_curve") for seeds in cells.values() for c in seeds.values()):
        plot = plot_curves(data, regime, out.parent / out.stem)
        return lines + ["", f"![validation accuracy, regime {regime}]({plot.relative_to(out.parent)})", ""]
    return lines + [""]


def regime_section(
    kind: str, regime: str, data: dict, arms: list[Arm], missing: dict[str, str], out: Path
) -> list[str]:
    """One regime: its table, the smallest detectable effect, the mis-tuned starts' recovery, the figures."""
    cells = data.get(regime, {})
    if not cells:
        why = sorted({w for t, w in missing.items() if t.split("/")[1] == regime})
        return [f"## Regime {regime}", "", f"No finished cells: {'; '.join(why) or 'not run'}.", ""]
    epochs = max((c["epochs"] for seeds in cells.values() for c in seeds.values()), default=0)
    table, compared = regime_table(kind, regime, cells, arms, missing)
    lines = [f"## Regime {regime} ({epochs} epochs)", "", *table]
    effects = [detectable_effect(c.sd, c.n) for c in compared.values() if c.n > 1]
    effects = [e for e in effects if not math.isnan(e) and e > 0]
    if effects:
        lines += [
            "",
            f"Smallest effect detectable at 80% power with these seeds (paired t, α = 0.05, per arm): "
            f"{min(effects) * 100:.2f}–{max(effects) * 100:.2f} points.",
        ]
    scale, places = (1.0, 4) if kind == "paper" else (100.0, 2)
    lines += recovery_lines(arms, cells, arms[0].name, scale, places)
    lines += cell_notes(arms, cells)
    return lines + regime_figures(kind, regime, data, arms, out)


def cell_notes(arms: list[Arm], cells: dict) -> list[str]:
    """What each derived cell was given (its run's note: the constant call applied, the seed whose metrics a
    placebo read; derived_arms.py), one line per arm and note, with the seeds that share it."""
    out = []
    for arm in arms:
        by_note: dict[str, list[int]] = {}
        for seed, cell in sorted(cells.get(arm.name, {}).items()):
            if cell.get("note"):
                by_note.setdefault(cell["note"], []).append(seed)
        for note, seeds in by_note.items():
            label = f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
            out.append(f"- `{arm.name}` ({label}): {note}")
    return ["", "What the derived arms were given (from each cell's run):", *out] if out else []


def write_report(
    kind: str,
    data: dict,
    regimes: list[str],
    arms: list[Arm],
    header: list[str],
    out: Path,
    proxy_note: str = "",
    missing: dict[str, str] | None = None,
) -> Path:
    """A Markdown report (mean ± SD, paired Δ vs the first arm with Holm-adjusted p and a TOST verdict, tool use,
    compute, published numbers) + plots where validation curves are known (not from a per-cell file).

    ``missing``: cells of this report that have no finished run, with why (e.g. a failed trial's error)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    missing = missing or {}
    lines = report_preamble(kind, data, regimes, arms, header, proxy_note)
    for regime in regimes:
        lines += regime_section(kind, regime, data, arms, missing, out)
    lines += missing_section(missing)
    out.write_text("\n".join(lines) + "\n")
    return out


def recovery_lines(arms: list[Arm], cells: dict, base_arm: str, scale: float, places: int) -> list[str]:
    """For arms run from a mis-tuned start (``<arm>@<start>``): how much of the gap between the published-start
    baseline and the same start's baseline each recovers, on mean test accuracy (1.0 = all of it)."""

    def mean_test(name: str) -> float | None:
        seeds = cells.get(name)
        return statistics.fmean(c["test"] for c in seeds.values()) if seeds else None

    tuned = mean_test(base_arm)
    out = []
    for start in dict.fromkeys(a.start for a in arms if a.start != "published"):
        floor = mean_test(f"{base_arm}@{start}")
        if tuned is None or floor is None:
            out.append(f"- start `{start}`: no gap measured (a baseline is not run)")
            continue
        gap = tuned - floor
        parts = []
        for arm in arms:
            value = mean_test(arm.name)
            if arm.start != start or arm.name == f"{base_arm}@{start}" or value is None:
                continue
            share = f"{(value - floor) / gap:+.2f}" if abs(gap) > 1e-12 else "n/a"
            parts.append(f"`{arm.name}` {share}")
        out.append(
            f"- start `{start}`: gap {gap * scale:.{places}f} ({base_arm} − {base_arm}@{start}); recovered: "
            + (", ".join(parts) or "no other arm run")
        )
    if not out:
        return []
    return [
        "",
        "Share of the mis-tuned start's gap recovered (mean test; 1 = all of it, < 0 = worse than not acting):",
        *out,
    ]


def subset_policy(data: dict) -> str:
    """What the report says about training subsets: drawn per seed, or one fixed subset (--fixed-subset)."""
    fixed = sorted(
        {str(c.get("data_seed", "None")) for a in data.values() for s in a.values() for c in s.values()}
    )
    if fixed in ([], ["None"]):
        return "Each seed draws its own training subset (stratified, seeded by the cell's seed)."
    return (
        f"Training subsets: data seed(s) {', '.join(fixed)} (--fixed-subset: one subset for every seed; the seed "
        "still sets initial weights and batch order)."
    )


def pbt_compute_note(arms: list[Arm], data: dict) -> str:
    """How much compute the PBT arm used, in trials (runs) of the other arms."""
    pbt = [a for a in arms if a.population]
    parts = []
    for arm in pbt:
        epochs = sorted({c["epochs"] for seeds in data.values() for c in seeds.get(arm.name, {}).values()})
        per = f" x {'/'.join(map(str, epochs))} epochs" if epochs else ""
        parts.append(
            f"`{arm.name}` is Population Based Training (Ray Tune's PBT over lr, dropout and weight decay): "
            f"each of its cells trains a population of {arm.population} members{per} and reports the member with the best "
            f"final validation accuracy (so its validation figures are a best of {arm.population}; its test accuracy "
            f"was not selected on), so one `{arm.name}` cell used {arm.population} trials' worth of compute; every "
            "other arm's cell is one trial."
        )
    return "Compute: " + " ".join(parts)


def _seed_ranges(seeds: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "s0–s2, s5, s7–s8"."""
    runs: list[list[int]] = []
    for seed in sorted(seeds):
        if runs and seed == runs[-1][-1] + 1:
            runs[-1].append(seed)
        else:
            runs.append([seed])
    return ", ".join(f"s{r[0]}" if len(r) == 1 else f"s{r[0]}–s{r[-1]}" for r in runs)


def missing_section(missing: dict[str, str] | None) -> list[str]:
    """The report's closing list of cells without a finished run, with why (first line of the error). The seeds
    of one experiment/regime/arm that share a reason share a line (`paper/10/rules/s3–s9`, 7 cells)."""
    if not missing:
        return []
    groups: dict[tuple[str, str], list[int]] = {}
    singles: list[tuple[str, str]] = []
    for tag, why in missing.items():
        why = (why.splitlines() or [""])[0][:300]
        prefix, _, seed = tag.rpartition("/s")
        if prefix and seed.isdigit():
            groups.setdefault((prefix, why), []).append(int(seed))
        else:
            singles.append((tag, why))
    entries = [
        (f"{prefix}/s{seeds[0]}", f"- `{prefix}/s{seeds[0]}`: {why}")
        if len(seeds) == 1
        else (f"{prefix}/s{min(seeds)}", f"- `{prefix}/{_seed_ranges(seeds)}` ({len(seeds)} cells): {why}")
        for (prefix, why), seeds in groups.items()
    ] + [(tag, f"- `{tag}`: {why}") for tag, why in singles]
    lines = ["## Missing cells", "", f"{len(missing)} cell(s) of this report have no finished run:", ""]
    lines += [line for _, line in sorted(entries)]
    return [*lines, ""]
