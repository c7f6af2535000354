"""Argument types shared by the tools. Flat on purpose: some providers (Gemini) reject nested schemas."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field


def _no_bool(value):
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


# A float that does not silently accept true/false. Range checks happen in the tool, where the
# current value and the trust region are known.
Number = Annotated[float, BeforeValidator(_no_bool)]

REASON_DESCRIPTION = "Why you make this change, in one short sentence (shown to the user in MLflow)."


def reason_field():
    return Field(description=REASON_DESCRIPTION, max_length=500)
