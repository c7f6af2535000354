"""Token prices, for an estimated cost next to the token counts a run records.

    price = price_for("openai:gpt-4o")                  # the table below, or None for an unknown model
    price = price_for("openai-compatible:m@url", price_in=0.2, price_out=0.6)   # USD per million tokens
    price.cost_usd(tokens_in=120_000, tokens_out=4_000)

The table holds the seeds' models only. Its numbers are ESTIMATES copied from the providers' public price pages
on ``PRICES_AS_OF`` (standard tier, text, no batch or cache discounts); prices change, so ``--price-in`` /
``--price-out`` override them, and a cost is always labelled an estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

PRICES_AS_OF = "2025-06"


@dataclass(frozen=True)
class Price:
    input_per_m: float  # USD per million input (prompt) tokens
    output_per_m: float  # USD per million output (completion) tokens
    source: str

    def cost_usd(self, tokens_in: float, tokens_out: float) -> float:
        return (tokens_in * self.input_per_m + tokens_out * self.output_per_m) / 1e6

    def describe(self) -> str:
        return f"${self.input_per_m:g} in / ${self.output_per_m:g} out per million tokens ({self.source})"


PRICE_TABLE: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00, f"OpenAI list price as of {PRICES_AS_OF}, an estimate"),
    "gemini-2.5-flash": Price(0.30, 2.50, f"Google list price (paid tier) as of {PRICES_AS_OF}, an estimate"),
}


def model_name(controller: str) -> str:
    """``openai:gpt-4o`` -> ``gpt-4o``; ``openai-compatible:qwen@http://...`` -> ``qwen``."""
    rest = controller.partition(":")[2] or controller
    return rest.partition("@")[0] if controller.startswith("openai-compatible:") else rest


def price_for(controller: str, price_in: float | None = None, price_out: float | None = None) -> Price | None:
    """The user's prices when given (either one alone is completed from the table, else 0), else the table's
    entry for the controller's model, else None (no cost is estimated)."""
    for name, value in (("price_in", price_in), ("price_out", price_out)):
        if value is not None and value < 0:
            raise ValueError(f"{name}={value} is out of range [0, inf) USD per million tokens")
    listed = PRICE_TABLE.get(model_name(controller))
    if price_in is None and price_out is None:
        return listed
    return Price(
        price_in if price_in is not None else (listed.input_per_m if listed else 0.0),
        price_out if price_out is not None else (listed.output_per_m if listed else 0.0),
        "set on the command line",
    )
