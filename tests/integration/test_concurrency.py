"""Concurrent runs against one MLflow tracking server: four ``mimic-learn run`` processes at once, sharing the
server (one SQLite store behind it) and the default graph-state database; every metric of every run arrives.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

pytestmark = [pytest.mark.faults, pytest.mark.slow]

RUNS = 4
EPOCHS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@pytest.fixture()
def server(tmp_path, request):
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [_bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'm.db'}", "--workers", "2"],
        cwd=tmp_path, stdout=log, stderr=log,
    )  # fmt: skip

    def stop():
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        mlflow.set_tracking_uri(None)

    request.addfinalizer(stop)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
        assert time.time() < deadline, "the MLflow server did not start in 120 s"
        time.sleep(0.5)
    return url


def test_four_runs_at_once_log_every_metric(server, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    procs = []
    for i in range(RUNS):
        log = (tmp_path / f"run{i}.log").open("w")
        cmd = [
            _bin("mimic-learn"), "run", "--task", "digits", "--epochs", str(EPOCHS), "--controller", "rules",
            "--tracking-uri", server, "--experiment", "concurrent", "--threads", "1", "--no-log-model",
        ]  # fmt: skip
        procs.append(subprocess.Popen(cmd, cwd=work, stdout=log, stderr=log))
    codes = [p.wait(timeout=600) for p in procs]
    for i, code in enumerate(codes):
        assert code == 0, (tmp_path / f"run{i}.log").read_text()[-3000:]

    mlflow.set_tracking_uri(server)
    exp = mlflow.get_experiment_by_name("concurrent")
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    children = [r for r in runs if r.data.tags.get("mimic.role") == "child"]
    parents = [r for r in runs if r.data.tags.get("mimic.role") == "parent"]
    assert len(children) == RUNS and len(parents) == RUNS
    assert all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags["mimic.thread_id"] for r in children}) == RUNS
    client = mlflow.MlflowClient()
    keys = set(children[0].data.metrics)
    per_epoch = {"train_loss", "val_loss", "val_acc", "lr", "guard_rollbacks", "grad_norm/net.1.weight"}
    per_decision = {"tool_calls", "invalid_calls", "refused_calls", "fallbacks"}
    assert per_epoch | per_decision | {"test_acc"} <= keys
    histories = []
    for run in children:
        assert set(run.data.metrics) == keys
        for key in per_epoch:
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3], key
        for key in per_decision:
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
        histories.append([m.value for m in client.get_metric_history(run.info.run_id, "val_loss")])
    assert all(h == histories[0] for h in histories), "same seed, same config: the runs must agree"
