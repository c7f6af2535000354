"""Sweeps on Ray: the spec file, failure bookkeeping, a 2x2 sweep and a failing trial on a local Ray with 2 CPUs
(one MLflow store, one parent run), Population Based Training, and `reproduce --executor ray` with the PBT arm."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import mlflow
import pytest
import yaml
from typer.testing import CliRunner

from mimic_learn.cli import app
from mimic_learn.experiments import (
    Arm,
    Cell,
    TrialResources,
    absolute_tracking_uri,
    cell_tag,
    finished_cells,
    load_spec,
    missing_cells,
    record_failures,
    run_sweep,
    start_ray,
)
from mimic_learn.graphs.runner import RunSpec
from mimic_learn.training import TrainConfig

SCRIPT = {
    "decisions": [{"epoch": 1, "tool_calls": [{"name": "set_lr", "args": {"lr": 0.002, "reason": "t"}}]}]
}


@pytest.fixture()
def workdir(workdir):
    """The shared working folder, with the scripted controller's decisions in it."""
    (workdir / "decisions.yaml").write_text(yaml.safe_dump(SCRIPT))
    return workdir


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray with 2 CPUs for the module's sweeps (each would otherwise start and stop its own)."""
    import ray

    started = start_ray(num_cpus=2)
    yield
    if started:
        ray.shutdown()


def _spec(folder: Path, arms: list[dict], seeds=(0, 1), epochs=2, name="grid", **extra) -> Path:
    path = folder / f"{name}.yaml"
    spec = {
        "name": name,
        "task": "digits",
        "regime": 200,
        "epochs": epochs,
        "seeds": list(seeds),
        "arms": arms,
    }
    path.write_text(yaml.safe_dump(spec | extra))
    return path


def _children(parent_id: str) -> list[mlflow.entities.Run]:
    return mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
        output_format="list",
    )


# ---------------------------------------------------------------------------------------------- no Ray needed
def test_sweep_report_rows_use_the_reproduction_reports_cells(workdir):
    from mimic_learn.experiments import arm_row_cells, write_sweep_report

    spec = load_spec(
        _spec(
            workdir,
            [{"name": "rules", "controller": "rules"}, {"name": "replay", "controller": "scripted:d.yaml"}],
        )
    )
    arms = [Arm("rules", "rules"), Arm("replay", "scripted:d.yaml")]

    def seed(test, calls, knobs):
        return {"test": test, "final_val": test, "best_val": test, "calls": calls, "accepted": calls,
                "fallbacks": 0.0, "knobs": knobs, "val_curve": [test - 0.1, test]}  # fmt: skip

    data = {"200": {"rules": {0: seed(0.8, 2, ["lr"]), 1: seed(0.9, 1, [])},
                    "replay": {0: seed(0.85, 0, []), 1: seed(0.92, 0, [])}}}  # fmt: skip
    out = write_sweep_report(spec, data, arms, {}, ["header"], workdir / "report.md")
    text = out.read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| r")}
    for arm in arms:
        cells = arm_row_cells(arm, data["200"][arm.name], {0: 0.8, 1: 0.9}, "rules", reference="(reference)")
        assert (
            f"| {cells['delta']} | {cells['tool_use']} | {cells['fallbacks']} | {cells['knobs']} |"
            in rows[arm.name]
        )
    assert "(reference)" in rows["rules"] and "+0.0350 ± 0.1906 (n=2)" in rows["replay"]
    assert "| 0 (0) | 0 | none |" in rows["replay"]


def test_spec_file_expands_to_cells_with_absolute_paths(workdir):
    path = _spec(
        workdir,
        [
            {"name": "rules", "controller": "rules", "reflection": "memory", "prompt": "paper"},
            {"name": "replay", "controller": "scripted:decisions.yaml", "every": 2, "train": {"lr": 0.01}},
            {"name": "pbt", "pbt": {"population": 3, "lr": [0.0001, 0.1]}},
        ],
        regime=[100, "full"],
        train={"batch_size": 32},
    )
    spec = load_spec(path)
    cells = spec.cells(workdir, threads=1, state_dir=workdir / "state")
    assert len(cells) == 2 * 2 * 3 and len({c.tag for c in cells}) == 12
    by_tag = {c.tag: c for c in cells}
    replay = by_tag["grid/100/replay/s1"]
    assert replay.spec.controller == f"scripted:{workdir / 'decisions.yaml'}"
    assert replay.spec.train.lr == 0.01 and replay.spec.train.batch_size == 32 and replay.spec.every == 2
    assert (
        replay.spec.train.regime == 100 and replay.spec.train.seed == 1 and replay.spec.train.num_threads == 1
    )
    assert Path(replay.spec.train.data_dir).is_absolute() and Path(replay.spec.state_db).is_absolute()
    rules = by_tag["grid/full/rules/s0"]
    assert (rules.spec.agent.reflection, rules.spec.agent.prompt) == ("memory", "paper")
    pbt = by_tag["grid/full/pbt/s0"]
    assert pbt.arm.population == 3 and pbt.spec.controller == "none"
    assert spec.arms[2].pbt.lr == (0.0001, 0.1) and spec.arms[2].pbt.interval(30) == 5


def test_a_spec_arm_is_the_reproductions_arm_type(workdir):
    """One type: a spec's arm entry is an ``Arm`` (``train:`` is its ``train_overrides``, ``controller: none``
    its None), so it also binds tools and starts from a mis-tuned start, as ``reproduce`` arms do."""
    entry = {
        "name": "careful",
        "controller": "rules",
        "train": {"lr": 0.01},
        "tools": ["set_lr", "keep_current"],
    }
    path = _spec(
        workdir, [entry | {"start": "dropout_0.7"}, {"name": "plain", "controller": "none"}], seeds=[0]
    )
    spec = load_spec(path)
    careful = Arm("careful", "rules", train_overrides={"lr": 0.01}, tools=("set_lr", "keep_current"))
    assert spec.arms == [replace(careful, start="dropout_0.7"), Arm("plain", None)]
    careful_cell, plain_cell = spec.cells(workdir, 1, workdir / "state")
    assert careful_cell.spec.agent.tools == ["set_lr", "keep_current"] and careful_cell.spec.train.lr == 0.01
    assert careful_cell.spec.train.dropout == 0.7 and plain_cell.spec.train.dropout != 0.7
    assert plain_cell.spec.controller == "none" and plain_cell.spec.agent.tools is None
    with pytest.raises(ValueError, match="start='lr_x2'"):
        load_spec(_spec(workdir, [entry | {"start": "lr_x2"}], name="bad_start"))


@pytest.mark.parametrize(
    ("arms", "extra", "message"),
    [
        ([{"name": "a", "controller": "rules"}, {"name": "a"}], {}, "repeated: a"),
        ([{"name": "a", "controler": "rules"}], {}, "arms.0.controler"),
        ([{"name": "p", "controller": "rules", "pbt": {}}], {}, "a pbt arm has no controller"),
        ([{"name": "a/b"}], {}, "arms.0.name"),
        ([{"name": "a"}], {"regime": "most"}, "regime='most'"),
        ([{"name": "a", "train": {"learning_rate": 1}}], {}, "learning_rate"),
        ([{"name": "p", "pbt": {"lr": [0.1, 0.01]}}], {}, "low < high"),
        (
            [{"name": "r", "controller": "rules", "reflection": "hope"}],
            {},
            "unknown reflection policy 'hope'",
        ),
        ([{"name": "r", "controller": "rules", "prompt": "poem"}], {}, "unknown prompt template 'poem'"),
    ],
)
def test_spec_errors_say_what_is_wrong(workdir, arms, extra, message):
    path = _spec(workdir, arms, **extra)
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("'", ".")):
        load_spec(path).cells(workdir, 1, workdir)


def test_cli_rejects_a_bad_spec_and_a_cluster_without_a_server(workdir):
    bad = _spec(workdir, [{"name": "a", "controller": "rules", "colour": "red"}])
    result = CliRunner().invoke(app, ["sweep", str(bad)])
    assert result.exit_code == 2 and "colour" in result.output
    good = _spec(workdir, [{"name": "a", "controller": "rules"}], name="ok")
    for store in ([], ["--tracking-uri", "sqlite:///m.db"]):
        result = CliRunner().invoke(app, ["sweep", str(good), "--address", "auto", *store])
        assert result.exit_code == 2 and "--tracking-uri http://" in result.output.replace("\n", "")
    result = CliRunner().invoke(app, ["reproduce", "paper", "--executor", "ray", "--address", "auto"])
    assert result.exit_code == 2 and "--tracking-uri http://" in result.output.replace("\n", "")


def test_absolute_tracking_uri(workdir):
    assert absolute_tracking_uri("sqlite:///m.db") == f"sqlite:///{workdir / 'm.db'}"
    assert absolute_tracking_uri("sqlite:////x/m.db") == "sqlite:////x/m.db"
    assert absolute_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_failures_are_recorded_in_the_store(workdir):
    """A run a killed worker left RUNNING is closed as FAILED; a cell that failed before opening a run gets one."""
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'm.db'}")
    experiment_id = mlflow.create_experiment("failures")
    spec = RunSpec(train=TrainConfig(task="digits", epochs=2), controller="rules")
    cells = [Cell("exp", "100", seed, Arm("rules", "rules"), spec) for seed in (0, 1, 2)]
    with mlflow.start_run(experiment_id=experiment_id) as parent:
        pid = parent.info.run_id
    client = mlflow.MlflowClient()
    killed = client.create_run(
        experiment_id,
        tags={"mimic.cell": cells[0].tag, "mimic.experiment": "exp", "mlflow.parentRunId": pid},
    )
    record_failures(cells, {cells[1].tag: "RuntimeError: no data"}, experiment_id, pid)
    killed = client.get_run(killed.info.run_id)
    assert killed.info.status == "FAILED" and "killed or out of memory" in killed.data.tags["mimic.error"]
    [created] = [r for r in _children(pid) if r.data.tags["mimic.cell"] == cells[1].tag]
    assert created.info.status == "FAILED" and created.data.tags["mimic.error"] == "RuntimeError: no data"
    assert created.data.params["controller"] == "rules"  # the failed cell's config is in the store too
    mlflow.set_experiment(experiment_id=experiment_id)
    missing = missing_cells("exp", ["100"], [Arm("rules", "rules")], [0, 1, 2], finished_cells("exp"))
    assert missing[cell_tag("exp", "100", "rules", 1)] == "failed: RuntimeError: no data"
    assert "killed" in missing[cell_tag("exp", "100", "rules", 0)]
    assert missing[cell_tag("exp", "100", "rules", 2)] == "not run"


# ---------------------------------------------------------------------------------------------- on Ray
@pytest.mark.slow
def test_two_by_two_sweep_on_local_ray_logs_every_cell_to_one_store(workdir, local_ray):
    path = _spec(
        workdir,
        [
            {"name": "rules", "controller": "rules"},
            {"name": "scripted", "controller": "scripted:decisions.yaml"},
        ],
    )
    uri = f"sqlite:///{workdir / 'm.db'}"
    outcome = run_sweep(load_spec(path), workdir, uri, resources=TrialResources(cpus=1), echo=lambda _: None)
    assert outcome.failed == {} and outcome.missing == {} and len(outcome.ran) == 4
    mlflow.set_tracking_uri(uri)
    parents = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`mimic.role` = 'parent'")
    assert list(parents.run_id) == [outcome.parent_run_id]  # one parent: the sweep
    children = _children(outcome.parent_run_id)
    assert sorted(r.data.tags["mimic.cell"] for r in children) == sorted(
        f"grid/200/{arm}/s{seed}" for arm in ("rules", "scripted") for seed in (0, 1)
    )
    client = mlflow.MlflowClient()
    for run in children:
        assert run.info.status == "FINISHED" and run.info.experiment_id == parents.experiment_id.iloc[0]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]
        assert "test_acc" in run.data.metrics and "tool_calls" in run.data.metrics
        lrs = [m.value for m in client.get_metric_history(run.info.run_id, "lr")]
        if run.data.tags["mimic.arm_name"] == "scripted":
            assert lrs == [0.001, 0.002]  # the scripted decision after epoch 1 reached the trainer
    report = outcome.report.read_text()
    assert "| rules | `rules` | 2 |" in report and "| scripted | `scripted:decisions.yaml` | 2 |" in report
    assert "Missing cells" not in report
    # A second sitting reuses every finished cell.
    again = run_sweep(load_spec(path), workdir, uri, echo=lambda _: None)
    assert again.ran == [] and len(again.skipped) == 4


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_sweep_completes(workdir, local_ray):
    path = _spec(
        workdir,
        [{"name": "rules", "controller": "rules"}, {"name": "broken", "controller": "scripted:missing.yaml"}],
        seeds=[0],
        name="faulty",
    )
    uri = f"sqlite:///{workdir / 'm.db'}"
    lines: list[str] = []
    outcome = run_sweep(load_spec(path), workdir, uri, retries=1, echo=lines.append)
    assert set(outcome.failed) == {"faulty/200/broken/s0"} and "missing.yaml does not exist" in str(
        outcome.failed
    )
    assert any(line.startswith("retry faulty/200/broken/s0") for line in lines)  # Tune retried it once
    mlflow.set_tracking_uri(uri)
    runs = {r.data.tags["mimic.cell"]: r for r in _children(outcome.parent_run_id)}
    assert runs["faulty/200/rules/s0"].info.status == "FINISHED"
    failed = runs["faulty/200/broken/s0"]
    assert failed.info.status == "FAILED" and "missing.yaml does not exist" in failed.data.tags["mimic.error"]
    report = outcome.report.read_text()
    assert "## Missing cells" in report and "`faulty/200/broken/s0`: failed: FileNotFoundError" in report


@pytest.mark.slow
def test_pbt_arm_logs_its_best_member_with_lineage_and_compute(workdir, local_ray):
    path = _spec(
        workdir,
        [{"name": "baseline"}, {"name": "pbt", "pbt": {"population": 2, "perturbation_interval": 1}}],
        seeds=[0],
        epochs=3,
        name="pbt",
    )
    uri = f"sqlite:///{workdir / 'm.db'}"
    outcome = run_sweep(load_spec(path), workdir, uri, echo=lambda _: None)
    assert outcome.failed == {} and outcome.missing == {}
    mlflow.set_tracking_uri(uri)
    [run] = [r for r in _children(outcome.parent_run_id) if r.data.tags["mimic.arm_name"] == "pbt"]
    assert run.data.tags["mimic.compute_trials"] == "2" and run.data.params["pbt.population"] == "2"
    client = mlflow.MlflowClient()
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2, 3]
    assert 0 < run.data.metrics["test_acc"] <= 1
    folder = client.download_artifacts(run.info.run_id, "", str(workdir / "art"))
    lineage = json.loads((Path(folder) / "pbt_lineage.json").read_text())["lineage"]
    assert lineage[0]["epoch"] == 0 and {"lr", "dropout", "weight_decay"} <= set(lineage[0])
    members = json.loads((Path(folder) / "pbt_population.json").read_text())["members"]
    assert len(members) == 2
    report = outcome.report.read_text()
    assert "| pbt | `PBT x2` | 1 |" in report and "2 trials' worth of compute" in report


@pytest.mark.slow
def test_reproduce_on_ray_with_the_pbt_arm(workdir, local_ray):
    result = CliRunner().invoke(
        app,
        [
            "reproduce", "paper", "--task", "digits", "--regimes", "100", "--seeds", "0", "--epochs", "2",
            "--controller", "rules", "--arms", "baseline,rules,pbt", "--executor", "ray",
            "--tracking-uri", f"sqlite:///{workdir / 'm.db'}",
        ],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = (workdir / "docs/results/paper.md").read_text()
    rows = [line.split(" | ")[0].strip("| ") for line in report.splitlines() if line.startswith("| ")]
    assert rows == ["arm", "baseline", "rules", "pbt"]
    assert "population of 4 members x 2 epochs" in report and "4 trials' worth of compute" in report
    # Without --arms the next report still shows the PBT cells that are in the store.
    again = CliRunner().invoke(
        app,
        ["reproduce", "paper", "--task", "digits", "--regimes", "100", "--seeds", "0", "--report-only",
         "--tracking-uri", f"sqlite:///{workdir / 'm.db'}"],
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    report = (workdir / "docs/results/paper.md").read_text()
    assert "| pbt | 1 |" in report and "## Missing cells" in report  # the LLM arms were never run here


@pytest.mark.slow
def test_sweep_command_starts_a_local_mlflow_server(workdir):
    path = _spec(workdir, [{"name": "rules", "controller": "rules"}], seeds=[0], name="served")
    result = CliRunner().invoke(app, ["sweep", str(path), "--num-cpus", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "MLflow server http://127.0.0.1:" in result.output and "1 of 1 cells finished" in result.output
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")  # the server's store, read directly
    [run] = mlflow.search_runs(
        search_all_experiments=True,
        filter_string="tags.`mimic.cell` = 'served/200/rules/s0'",
        output_format="list",
    )
    assert run.info.status == "FINISHED" and run.data.metrics["test_acc"] > 0
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # artifacts went through the server
    assert (workdir / "mlartifacts").is_dir()
