"""Moved to ``agents/pricing.py``. A shim for ``experiments.py`` (another change moves it); remove it once that
file imports ``mimic_learn.agents.pricing``."""

from .agents.pricing import PRICE_TABLE, PRICES_AS_OF, Price, model_name, price_for

__all__ = ["PRICES_AS_OF", "PRICE_TABLE", "Price", "model_name", "price_for"]
