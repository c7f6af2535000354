"""Plots as PNG files: validation accuracy/loss per epoch and lr/dropout/alpha trajectories, arms overlaid."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = (
    ("val_acc", "validation accuracy", "linear"),
    ("val_loss", "validation loss", "linear"),
    ("lr", "learning rate", "log"),
    ("dropout", "dropout", "linear"),
    ("alpha", "alpha", "linear"),
)


def plot_run(arms: dict[str, list[dict]], out_dir: Path, panels: tuple[str, ...] | None = None) -> list[Path]:
    """``arms`` maps an arm name to its epoch reports (dicts). Returns the PNG files written.

    By default two figures (validation.png: accuracy and loss; knobs.png: lr, dropout, alpha); ``panels``
    picks keys for a single figure instead."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    # A user loop's own numbers (LoopTrainer) sit in "metrics"; its monitored one gets the validation panel.
    arms = {arm: [r | (r.get("metrics") or {}) for r in reports] for arm, reports in arms.items()}
    validation = (PANELS[0], PANELS[1])
    monitors = {r.get("monitor") for reports in arms.values() for r in reports} - {
        None,
        "val_acc",
        "val_loss",
    }
    if monitors:
        validation = tuple((m, m, "linear") for m in sorted(monitors)) + validation[1:]
    figures = ((validation, "validation.png"), (PANELS[2:], "knobs.png"))
    if panels is not None:
        figures = ((tuple(p for p in PANELS if p[0] in panels), "_".join(panels) + ".png"),)
    for groups, name in figures:
        fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.6), squeeze=False)
        for ax, (key, label, scale) in zip(axes[0], groups, strict=True):
            for arm, reports in arms.items():
                points = [(r["epoch"], r[key]) for r in reports if r.get(key) is not None]
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, marker="o", markersize=3, label=arm)
            ax.set_xlabel("epoch")
            ax.set_title(label)
            if scale == "log" and any(ln.get_ydata().min() > 0 for ln in ax.get_lines()):
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
        if axes[0][0].get_lines():
            axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_strip(values: dict[str, list[float]], path: Path, ylabel: str = "test accuracy") -> Path:
    """One dot per seed for each arm (a strip plot), the arm's mean as a bar: how a report shows per-seed spread,
    bimodal arms included, where a mean ± SD would hide it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(values)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(names) + 1.5), 3.2))
    for i, name in enumerate(names):
        ys = values[name]
        if not ys:
            continue
        offsets = [(k - (len(ys) - 1) / 2) * min(0.05, 0.6 / max(1, len(ys))) for k in range(len(ys))]
        ax.scatter([i + o for o in offsets], ys, s=14, alpha=0.8)
        mean = sum(ys) / len(ys)
        ax.hlines(mean, i - 0.3, i + 0.3, colors="black", linewidth=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
