"""Prompt templates, selectable by name."""

from .templates import TEMPLATES, render, system_prompt

__all__ = ["TEMPLATES", "render", "system_prompt"]
