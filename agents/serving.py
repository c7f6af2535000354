"""llama.cpp's OpenAI-compatible HTTP server for one GGUF file, so that a sweep's trials share one endpoint.

    mimic-learn serve-model qwen2.5-coder-0.5b --port 8080        # or a path to any GGUF chat model
    mimic-learn run --controller openai-compatible:qwen@http://127.0.0.1:8080/v1

The server is ``xllamacpp.Server`` (llama.cpp's own ``llama-server`` code, in-process) with jinja chat templates
on, so a model whose template supports tools (Qwen2.5's does; SmolLM2-135M's does not) gets llama.cpp's native
tool-call parsing: ``tool_calls`` in the HTTP response. It binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class ServedModel:
    server: Any  # xllamacpp.Server; the HTTP listener lives as long as this object
    host: str
    port: int
    path: Path

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve_gguf(
    path: str | Path,
    host: str = "127.0.0.1",
    port: int | None = None,
    n_threads: int = 1,
    n_ctx: int = 8192,
    n_parallel: int = 1,
    alias: str | None = None,
    verbosity: int = -1,
) -> ServedModel:
    """Start llama.cpp's server on ``host:port`` (a free port when None) and return once it answers /health."""
    import xllamacpp

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path={str(path)!r}: no such GGUF file")
    if not 1 <= n_threads <= 256:
        raise ValueError(f"n_threads={n_threads} is out of range [1, 256]")
    port = port or free_port(host)
    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.n_ctx = n_ctx * n_parallel  # llama.cpp splits the context over the parallel slots
    params.n_parallel = n_parallel
    params.cpuparams.n_threads = n_threads
    params.cpuparams_batch.n_threads = n_threads
    params.use_jinja = True  # the model's own chat template, with tool support where it has some
    params.hostnames = [host]
    params.port = port
    params.verbosity = verbosity
    if alias:
        params.model_alias = {alias}
    server = xllamacpp.Server(params)
    served = ServedModel(server=server, host=host, port=port, path=path)
    wait_until_healthy(f"http://{host}:{port}/health")
    return served


def wait_until_healthy(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if json.loads(response.read() or b"{}").get("status") == "ok":
                    return
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not report healthy within {timeout_s:g} s ({last})")
