"""Reflection policies, selected by name. Add one: a file here with a ``@register_policy`` class."""

import importlib
import pkgutil

from .base import POLICIES, ReflectionContext, ReflectionOutcome, ReflectionPolicy, register_policy


def get_policy(name: str) -> ReflectionPolicy:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    if name not in POLICIES:
        raise ValueError(f"unknown reflection policy {name!r}; choose one of {', '.join(sorted(POLICIES))}")
    return POLICIES[name]()


__all__ = [
    "POLICIES",
    "ReflectionContext",
    "ReflectionOutcome",
    "ReflectionPolicy",
    "get_policy",
    "register_policy",
]
