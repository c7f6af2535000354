"""An MLflow tracking server for the length of a block, so that many processes (Ray trials) log to one store.

    with tracking_server("sqlite:///mlflow.db") as url:      # http://127.0.0.1:<free port>
        ...                                                   # trials log over HTTP to url

Several processes writing one sqlite file directly stalled (each process's SQLAlchemy pool ran dry waiting for
the file lock while metrics and traces were logged asynchronously), so a sqlite store is served while trials run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def absolute_tracking_uri(uri: str) -> str:
    """``sqlite:///mlflow.db`` -> ``sqlite:////abs/mlflow.db``: trials must not resolve it in their own folder."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    if "://" not in uri:
        return str(Path(uri).resolve())
    return uri


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait_until_healthy(proc: subprocess.Popen, url: str, log_path: Path, timeout_s: float) -> None:
    """Poll the server's /health until it answers 200; raise with its log if it exits or stays silent."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"mlflow server exited with code {proc.returncode}; its log is {log_path}:\n"
                + log_path.read_text()[-2000:]
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"mlflow server did not answer on {url} within {timeout_s:.0f}s; see {log_path}"
            )
        time.sleep(0.5)


@contextmanager
def tracking_server(
    store_uri: str = "sqlite:///mlflow.db",
    host: str = "127.0.0.1",
    port: int | None = None,
    timeout_s: float = 90,
) -> Iterator[str]:
    """``mlflow server`` over ``store_uri`` on ``host``:``port`` (a free one by default) for as long as the block
    runs; yields its URL. Artifacts go to ``mlartifacts/`` beside a sqlite file, served by the server."""
    store_uri = absolute_tracking_uri(store_uri)
    port = port or free_port(host)
    folder = (
        Path(store_uri.removeprefix("sqlite:///")).parent if store_uri.startswith("sqlite:") else Path.cwd()
    )
    log_path = Path(".mimic") / f"mlflow-server-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    mlflow_bin = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    cmd = [
        mlflow_bin, "server", "--host", host, "--port", str(port), "--backend-store-uri", store_uri,
        "--artifacts-destination", str(folder / "mlartifacts"), "--workers", "2",
    ]  # fmt: skip
    url = f"http://{host}:{port}"
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_healthy(proc, url, log_path, timeout_s)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)  # its own session: the server and its workers
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
