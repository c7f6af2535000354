"""Moved to ``tracking/plots.py``. A shim for ``experiments.py`` (another change moves it); remove it once that
file imports ``mimic_learn.tracking.plots``."""

from .tracking.plots import PANELS, plot_run, plot_strip

__all__ = ["PANELS", "plot_run", "plot_strip"]
