"""Controllers (model providers, rules, scripted, local) and reflection policies."""

from .providers import ProviderOptions, build_controller, default_controller, load_chat_model
from .rules import RulesChatModel
from .scripted import ScriptedChatModel

__all__ = [
    "ProviderOptions",
    "RulesChatModel",
    "ScriptedChatModel",
    "build_controller",
    "default_controller",
    "load_chat_model",
]
