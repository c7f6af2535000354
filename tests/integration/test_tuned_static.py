"""`mimic-learn tune-static` and the `tuned_static` arm on tiny data: the study's file, the cell training with the
tuned values, the "not run" cell with its fix, the refused seeds, the dry run's tuning compute."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from mimic_learn.cli import app
from mimic_learn.experiments import ReproduceOptions, describe_plan, plan_reproduce, reproduce
from mimic_learn.experiments.reproduction import pending_cells
from mimic_learn.experiments.tuned import (
    SEARCH_SPACES,
    TunedParamsMissing,
    TuneOptions,
    base_config,
    final_val_acc,
    tune_static,
    tuned_arm,
)
from mimic_learn.graphs.runner import AgentRunner

pytest.importorskip("optuna")

TUNED = {"lr": 0.0042, "dropout": 0.37, "weight_decay": 3e-4}


def _tuned_file(path: Path, regimes=("100",), seeds=(100,), epochs: int = 2) -> Path:
    entry = {"params": TUNED, "n_trials": 5, "tuning_seeds": list(seeds), "task": "digits", "epochs": epochs}
    entry |= {"trial_epochs": 5 * len(seeds) * epochs, "wall_s": 12.0, "objective_value": 0.5}
    path.write_text(json.dumps({"kind": "paper", "regimes": {r: dict(entry) for r in regimes}}))
    return path


def test_a_tiny_study_writes_values_inside_the_ranges_and_resumes(workdir):
    options = TuneOptions(
        "paper", ["100"], trials=3, seeds=[100], task="digits", epochs=2, out=workdir / "tuned.json",
        storage=f"sqlite:///{workdir / 'optuna.db'}", command="tune-static test",
    )  # fmt: skip
    lines: list[str] = []
    tune_static(options, echo=lines.append)
    entry = json.loads((workdir / "tuned.json").read_text())["regimes"]["100"]
    assert sum(x.startswith("done paper/100 trial") for x in lines) == 3
    assert entry["n_trials"] == 3 and entry["tuning_seeds"] == [100] and entry["trial_epochs"] == 3 * 1 * 2
    space, params = SEARCH_SPACES["paper"], entry["params"]
    assert space.lr[0] <= params["lr"] <= space.lr[1]
    assert space.dropout[0] <= params["dropout"] <= space.dropout[1]
    wd = params["weight_decay"]
    assert wd == 0.0 or space.weight_decay[0] <= wd <= space.weight_decay[1]
    assert entry["command"] == "tune-static test" and entry["wall_s"] > 0
    # The objective is the final validation accuracy of the tuning seed, trained with the best values.
    again = final_val_acc(replace(base_config(options, "100", 100), **params))
    assert entry["objective_value"] == pytest.approx(again)
    # Resumed: the three finished trials count; one more runs; another regime is added beside the first.
    lines.clear()
    tune_static(replace(options, trials=4, regimes=["100", "10"]), echo=lines.append)
    doc = json.loads((workdir / "tuned.json").read_text())
    assert sum(x.startswith("skip paper/100") for x in lines) == 3
    assert sum(x.startswith("done paper/100") for x in lines) == 1
    assert doc["regimes"]["100"]["n_trials"] == 4 and doc["regimes"]["10"]["n_trials"] == 4


def test_tuning_seeds_among_the_tables_are_refused(workdir):
    options = TuneOptions("paper", ["100"], trials=1, seeds=[2, 100], task="digits", epochs=1)
    with pytest.raises(ValueError, match=r"tuning seeds \[2\] are among the table's seeds"):
        tune_static(options)
    result = CliRunner().invoke(app, ["tune-static", "paper", "--task", "digits", "--seeds", "100,5"])
    assert result.exit_code == 2 and "tuning seeds [5] are among the table's seeds" in result.output
    assert not (workdir / "docs/results/paper_tuned.json").exists()
    # A table whose seed was a tuning seed refuses its tuned_static cell before anything runs.
    path = _tuned_file(workdir / "t.json", seeds=(100, 101))
    repro = ReproduceOptions(
        "paper", ["100"], [0, 101], ["tuned_static"], task="digits", epochs=2, tuned_file=path
    )
    with pytest.raises(ValueError, match=r"seed 101: a tuning seed of .*choose other --seeds"):
        pending_cells(repro, [_tuned_arm()], {}, print)


def _arms(kind: str):
    from mimic_learn.experiments import known_arms

    return known_arms(kind)


def _tuned_arm():
    return next(a for a in _arms("paper") if a.name == "tuned_static")


def test_the_tuned_static_cell_trains_with_the_files_values(workdir):
    path = _tuned_file(workdir / "t.json")
    arms = [a for a in _arms("paper") if a.name in ("baseline", "tuned_static")]
    repro = ReproduceOptions("paper", ["100"], [0], task="digits", epochs=2, tuned_file=path)
    cells = {c.arm.name: c for c in pending_cells(repro, arms, {}, print)[0]}
    runner = AgentRunner(cells["tuned_static"].spec)
    trainer = runner.trainer
    assert (trainer.lr, trainer.dropout, trainer.weight_decay) == pytest.approx(tuple(TUNED.values()))
    runner.close()
    assert cells["baseline"].spec.train.lr == 1e-3  # the other arms keep the experiment's values
    # From a mis-tuned start the tuned values still win: the tuned baseline does not depend on the start.
    start = replace(arms[1], name="tuned_static@lr_x30", start="lr_x30")
    spec_train = base_config(TuneOptions("paper", ["100"], task="digits", epochs=2), "100", 0)
    assert tuned_arm(start, "paper", "100", spec_train, path).train_overrides == TUNED


def test_a_regime_without_tuned_values_is_not_run_with_the_fix(workdir):
    path = _tuned_file(workdir / "t.json", regimes=("100",), epochs=1)
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'm.db'}")
    mlflow.set_experiment("t")
    options = ReproduceOptions(
        "paper", ["100", "600"], [0], ["baseline", "tuned_static"], task="digits", epochs=1, tuned_file=path,
        out=workdir / "paper.md", command="test",
    )  # fmt: skip
    lines: list[str] = []
    reproduce(options, echo=lines.append)
    fix = "run mimic-learn tune-static paper --regimes 600 --task digits --epochs 1 first"
    assert any(x.startswith("not run paper/600/tuned_static/s0") and fix in x for x in lines)
    report = (workdir / "paper.md").read_text()
    assert f"| tuned_static | 0 | not run (no tuned values for this regime in {path}; {fix})" in report
    # The tuning's compute is stated: spent once per regime, outside the cells' run time.
    assert "100: 5 trials x 1 seeds (tuning seeds 100) = 5 trial-epochs, 0 min" in report
    assert "That tuning is not in the cells' run time." in report
    assert fix in (workdir / "paper_cells.csv").read_text()
    run = mlflow.search_runs(
        filter_string="tags.`mimic.cell` = 'paper/100/tuned_static/s0'", output_format="list"
    )
    assert [float(run[0].data.params[k]) for k in TUNED] == pytest.approx(list(TUNED.values()))
    # With MLflow on, each trial is a child run of one tune-static parent, with its values and score.
    tuned = TuneOptions(
        "paper", ["10"], trials=2, seeds=[100], task="digits", epochs=1, out=workdir / "t2.json",
        storage=f"sqlite:///{workdir / 'o.db'}", log_to_mlflow=True,
    )  # fmt: skip
    tune_static(tuned, echo=lines.append)
    trials = mlflow.search_runs(filter_string="tags.`mimic.tune` = 'paper/10'", output_format="list")
    assert len(trials) == 2 and all(r.data.tags.get("mlflow.parentRunId") for r in trials)
    best = json.loads((workdir / "t2.json").read_text())["regimes"]["10"]
    assert max(r.data.metrics["val_acc_mean"] for r in trials) == pytest.approx(best["objective_value"])
    # No file at all: the same, naming the file; a file tuned for other epochs: the fix says which.
    train = base_config(TuneOptions("paper", ["100"], task="digits", epochs=2), "100", 0)
    with pytest.raises(TunedParamsMissing, match="no tuned file .*absent.json; run mimic-learn tune-static"):
        tuned_arm(_tuned_arm(), "paper", "100", train, workdir / "absent.json")
    with pytest.raises(TunedParamsMissing, match="tuned for task digits, 1 epochs, not digits, 2"):
        tuned_arm(_tuned_arm(), "paper", "100", train, path)


def test_the_dry_run_counts_the_tuning(workdir):
    path = _tuned_file(workdir / "t.json", regimes=("100",), seeds=(100, 101), epochs=30)
    plan = plan_reproduce(
        "paper",
        ["100", "10"],
        [0, 1],
        ["baseline", "tuned_static"],
        "rules",
        None,
        tuned_file=path,
        task="digits",
    )
    rows = {(r.arm, r.regime): r for r in plan.rows}
    # the file was tuned on digits: for the experiment's own task (MNIST) its values do not count as done
    on_mnist = plan_reproduce("paper", ["100"], [0], ["tuned_static"], "rules", None, tuned_file=path)
    assert on_mnist.rows[0].tuning_status == "to run"
    assert (rows["tuned_static", "100"].trials, rows["tuned_static", "100"].tuning_epochs) == (5, 5 * 2 * 30)
    assert rows["tuned_static", "100"].tuning_status == "done"
    assert (rows["tuned_static", "10"].trials, rows["tuned_static", "10"].tuning_status) == (20, "to run")
    assert rows["tuned_static", "10"].tuning_epochs == 20 * 2 * 30 and rows["baseline", "10"].trials == 0
    text = describe_plan(plan)
    assert "100: 5 trials, 300 trial epochs, 0.2 min (done)" in text
    assert "10: 20 trials, 1,200 trial epochs, 22.0 min (to run)" in text
