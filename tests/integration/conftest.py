"""What the integration tests that drive ``mimic-learn`` commands share: a working folder of their own (the
commands write ``mlflow.db``, ``.mimic/`` and ``docs/results/`` relative to it) and the reproduce command."""

from __future__ import annotations

from collections.abc import Callable

import mlflow
import pytest
from typer.testing import CliRunner

from mimic_learn.cli import app


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """The test's own current folder; the tracking URI a command set does not leak into the next test."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    mlflow.set_tracking_uri(None)


@pytest.fixture()
def run_reproduce() -> Callable[..., str]:
    """``run_reproduce(*args)``: ``mimic-learn reproduce *args``'s output, failing the test on a non-zero exit;
    ``unwrap=True`` joins the console's wrapped lines (for phrases a narrow terminal splits)."""

    def run(*args: str, unwrap: bool = False) -> str:
        result = CliRunner().invoke(app, ["reproduce", *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split()) if unwrap else result.output

    return run
