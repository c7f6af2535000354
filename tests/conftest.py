"""Shared fixtures: where the MNIST idx files live; lines a suite adds to ``SUMMARY`` end pytest's output."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


# A suite appends lines here (``request.config.stash[SUMMARY]``); they are printed in pytest's terminal summary
# (the fault suite's case count and distinct guards exercised).
SUMMARY = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[SUMMARY] = []


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    for line in config.stash.get(SUMMARY, []):
        terminalreporter.write_line(line)


def _has_mnist(data_dir: Path) -> bool:
    return all((data_dir / "MNIST" / "raw" / name).is_file() for name in MNIST_FILES)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The folder holding ``MNIST/raw`` (what ``--data-dir`` takes): $MIMIC_MNIST_DIR, else ``<repo>/../shared/data``.

    Missing data skips the test locally but fails it in CI (``CI=true``), where the data must be there.
    """
    candidates = []
    if os.environ.get("MIMIC_MNIST_DIR"):
        candidates.append(Path(os.environ["MIMIC_MNIST_DIR"]))
    candidates.append(REPO.parent / "shared" / "data")
    for candidate in candidates:
        if _has_mnist(candidate):
            return candidate.resolve()
    where = ", ".join(str(c / "MNIST" / "raw") for c in candidates)
    message = (
        f"MNIST idx files not found (looked in {where}); set MIMIC_MNIST_DIR to the folder holding MNIST/raw"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)
