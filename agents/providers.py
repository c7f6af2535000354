"""Controllers chosen by one string.

    rules                               deterministic LLM-free policy (agents/rules.py)
    scripted:<file.yaml|json>           replay tool calls from a file (agents/scripted.py)
    random[:seed]                       a seeded random policy (agents/random_policy.py), the floor to beat
    local[:<file.gguf>]                 the embedded offline LLM (SmolLM2-135M by default; agents/local.py)
    openai:gpt-4o, google_genai:gemini-2.5-flash, anthropic:..., ...
                                        any provider ``init_chat_model`` knows (keys from the environment)
    openai-compatible:<model>@<base_url>
                                        a vLLM / Ollama / llama.cpp server, e.g.
                                        openai-compatible:qwen2.5-7b-instruct@http://127.0.0.1:8000/v1

``build_controller`` wraps the model with LangChain's ``with_retry`` (exponential backoff) and
``with_fallbacks`` (default: the ``rules`` controller). A fallback's messages carry
``response_metadata["fallback"] = True``; the graph counts and records them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.runnables import Runnable, RunnableLambda

from .rules import RulesChatModel
from .scripted import ScriptedChatModel


@dataclass
class ProviderOptions:
    timeout_s: float = 60.0
    retries: int = 2
    retry_wait: bool = True  # exponential backoff with jitter between retries
    fallback: str | None = "rules"
    temperature: float | None = 0.0
    model_path: str | None = None  # for `local`: any GGUF chat model
    n_threads: int = 1


def default_controller() -> str:
    """``local`` when the embedded model is installed, else ``rules``."""
    try:
        from .local import find_smollm2_gguf

        find_smollm2_gguf()
        return "local"
    except Exception:
        return "rules"


def default_prompt(controller: str, model_path: str | None = None) -> str:
    """The prompt template a controller gets when none is named: ``compact`` (a few lines of facts in words) for
    the built-in SmolLM2-135M, which cannot read ``full``'s tables (README, "How good are the controllers?");
    ``full`` for every other controller, a ``local`` one with another GGUF model included."""
    return "compact" if controller == "local" and not model_path else "full"


def load_chat_model(spec: str, options: ProviderOptions | None = None) -> BaseChatModel:
    opts = options or ProviderOptions()
    if spec == "rules":
        return RulesChatModel()
    if spec == "random" or spec.startswith("random:"):
        from .random_policy import RandomChatModel

        return RandomChatModel(seed=int(spec.partition(":")[2] or 0))
    if spec.startswith("scripted:"):
        return ScriptedChatModel.from_file(spec.removeprefix("scripted:"))
    if spec == "local" or spec.startswith("local:"):
        from .local import LocalChatModel

        path = spec.removeprefix("local").removeprefix(":") or opts.model_path
        kwargs = {"n_threads": opts.n_threads}
        if path:
            kwargs["model_path"] = path
        return LocalChatModel(**kwargs)
    if spec.startswith("openai-compatible:"):
        from langchain_openai import ChatOpenAI

        model, sep, base_url = spec.removeprefix("openai-compatible:").partition("@")
        if not sep or not model or not base_url:
            raise ValueError(
                f"{spec!r}: use openai-compatible:<model>@<base_url>, e.g. openai-compatible:llama3@http://127.0.0.1:8000/v1"
            )
        return ChatOpenAI(
            model=model,
            base_url=base_url,
            api_key=os.environ.get("OPENAI_API_KEY", "not-needed"),
            timeout=opts.timeout_s,
            max_retries=0,
            temperature=opts.temperature,
        )
    if ":" not in spec:
        raise ValueError(
            f"unknown controller {spec!r}: use rules, scripted:<file>, local, <provider>:<model> "
            "(e.g. openai:gpt-4o, google_genai:gemini-2.5-flash) or openai-compatible:<model>@<url>"
        )
    from langchain.chat_models import init_chat_model

    kwargs = {"timeout": opts.timeout_s, "max_retries": 0}
    if opts.temperature is not None:
        kwargs["temperature"] = opts.temperature
    try:
        return init_chat_model(spec, **kwargs)
    except Exception as exc:  # missing key or package: say what to do
        raise ValueError(
            f"could not start controller {spec!r}: {exc}. Set the provider's API key in the environment "
            "(e.g. OPENAI_API_KEY, GOOGLE_API_KEY) or choose --controller rules / local."
        ) from exc


def build_controller(model: BaseChatModel, tools: list, options: ProviderOptions | None = None) -> Runnable:
    """Bind tools, add retries with backoff, then the fallback controller."""
    opts = options or ProviderOptions()
    bound = model.bind_tools(tools)
    if model._llm_type in (
        "mimic-rules",
        "mimic-scripted",
        "mimic-random",
    ):  # deterministic: nothing to retry
        return bound
    if opts.retries > 0:
        bound = bound.with_retry(stop_after_attempt=opts.retries + 1, wait_exponential_jitter=opts.retry_wait)
    if opts.fallback:
        fallback = load_chat_model(opts.fallback, opts).bind_tools(tools) | RunnableLambda(_mark_fallback)
        bound = bound.with_fallbacks([fallback])
    return bound


def _mark_fallback(message: AIMessage) -> AIMessage:
    message.response_metadata = {**message.response_metadata, "fallback": True}
    return message
