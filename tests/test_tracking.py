"""MLflow tracking against a temporary sqlite store: runs, metrics, traces, decisions table, plots, secrets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pytest
import yaml
from typer.testing import CliRunner

from mimic_learn.cli import app

SCRIPT = {
    "decisions": [
        {
            "epoch": 1,
            "turns": [
                [{"name": "set_lr", "args": {"lr": 5.0, "reason": "too big on purpose"}}],
                [
                    {"name": "set_lr", "args": {"lr": 0.002, "reason": "corrected"}},
                    {"name": "inspect_grad_norms", "args": {}},
                ],
            ],
        },
        {
            "epoch": 2,
            "tool_calls": [{"name": "set_dropout", "args": {"dropout": 0.3, "reason": "regularise"}}],
        },
    ]
}


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    yield tmp_path, uri
    mlflow.set_tracking_uri(None)


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _scripted_run(tmp_path: Path, uri: str, epochs: int = 3, extra: tuple[str, ...] = ()) -> str:
    script = tmp_path / "script.yaml"
    script.write_text(yaml.safe_dump(SCRIPT))
    return _cli(
        "run", "--task", "digits", "--epochs", str(epochs), "--controller", f"scripted:{script}",
        "--reflection", "memory", "--tracking-uri", uri, "--experiment", "t", "--state-db", str(tmp_path / "g.sqlite"), *extra,
    )  # fmt: skip


def test_scripted_run_is_fully_tracked(store):
    tmp_path, uri = store
    output = _scripted_run(tmp_path, uri)
    assert "set_lr(lr=5.0) rejected" in output and "set_dropout(dropout=0.3) ok" in output
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name("t")
    runs = mlflow.search_runs([exp.experiment_id])
    parent = runs[runs["tags.mimic.role"] == "parent"]
    child = runs[runs["tags.mimic.role"] == "child"]
    assert len(parent) == 1 and len(child) == 1
    child_id = child.run_id.iloc[0]
    assert child["tags.mlflow.parentRunId"].iloc[0] == parent.run_id.iloc[0]
    client = mlflow.MlflowClient()
    run = client.get_run(child_id)
    assert run.data.params["controller"].startswith("scripted:") and run.data.params["reflection"] == "memory"
    assert {"torch.version", "langgraph.version", "device"} <= set(run.data.tags)
    for key in (
        "train_loss",
        "val_acc",
        "lr",
        "dropout",
        "alpha",
        "weight_decay",
        "grad_norm/net.1.weight",
        "val_acc_class/0",
    ):
        assert [m.step for m in client.get_metric_history(child_id, key)] == [1, 2, 3], key
    assert [m.step for m in client.get_metric_history(child_id, "tool_calls")] == [1, 2]
    assert client.get_metric_history(child_id, "invalid_calls")[0].value == 1
    assert "test_acc" in run.data.metrics
    lr = client.get_metric_history(child_id, "lr")
    assert [m.value for m in lr] == [0.001, 0.002, 0.002]

    traces = mlflow.search_traces(locations=[exp.experiment_id], return_type="list")
    assert len(traces) == 2  # one per decision (no decision after the last epoch)
    by_epoch = {t.info.tags["epoch"]: t for t in traces}
    assert set(by_epoch) == {"1", "2"}
    for trace in traces:
        assert trace.info.request_metadata.get("mlflow.sourceRun") == child_id
        names = [s.name for s in trace.data.spans]
        assert {"observe", "reflect", "decide", "apply"} <= set(names)
        assert len(names) == len({s.span_id for s in trace.data.spans})
    names1 = [s.name for s in by_epoch["1"].data.spans]
    assert names1.count("set_lr") == 2 and "inspect_grad_norms" in names1
    assert "set_dropout" in [s.name for s in by_epoch["2"].data.spans]

    parent_plots = {a.path for a in client.list_artifacts(parent.run_id.iloc[0], "plots")}
    assert parent_plots == {"plots/validation.png", "plots/knobs.png"}
    artifacts = {a.path for a in client.list_artifacts(child_id)}
    assert {"decisions.json", "history.json", "plots"} <= artifacts
    assert {a.path for a in client.list_artifacts(child_id, "plots")} == {
        "plots/validation.png",
        "plots/knobs.png",
    }
    table = json.loads(
        Path(client.download_artifacts(child_id, "decisions.json", str(tmp_path / "dl"))).read_text()
    )
    rows = [dict(zip(table["columns"], r, strict=True)) for r in table["data"]]
    assert [(r["epoch"], r["tool"], r["accepted"]) for r in rows] == [
        (1, "set_lr", False), (1, "set_lr", True), (1, "inspect_grad_norms", True), (2, "set_dropout", True)
    ]  # fmt: skip
    assert "out of range" in rows[0]["reply"] and rows[1]["reason"] == "corrected"
    assert "Verdict" in rows[3]["reflection"]


def test_export_decisions_replays_the_run(store):
    tmp_path, uri = store
    _scripted_run(tmp_path, uri)
    mlflow.set_tracking_uri(uri)
    child = mlflow.search_runs(
        search_all_experiments=True, filter_string="tags.`mimic.role` = 'child'"
    ).run_id.iloc[0]
    out = tmp_path / "replay.yaml"
    _cli("export-decisions", child, str(out), "--tracking-uri", uri)
    exported = yaml.safe_load(out.read_text())
    assert exported["decisions"][0]["turns"][0] == SCRIPT["decisions"][0]["turns"][0]
    assert exported["decisions"][0]["turns"][1] == SCRIPT["decisions"][0]["turns"][1]
    assert exported["decisions"][1]["turns"] == [SCRIPT["decisions"][1]["tool_calls"]]
    replay = _cli(
        "run", "--task", "digits", "--epochs", "3", "--controller", f"scripted:{out}", "--tracking-uri", uri,
        "--experiment", "t", "--state-db", str(tmp_path / "g2.sqlite"), "--no-log-model",
    )  # fmt: skip
    assert "set_lr(lr=5.0) rejected" in replay and "set_dropout(dropout=0.3) ok" in replay
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`mimic.role` = 'child'")
    finals = sorted(runs["metrics.test_acc"].tolist())
    assert finals[0] == finals[1], "a replay of a scripted run on the same seed reproduces it"


def test_api_key_never_reaches_the_store(store, monkeypatch):
    tmp_path, uri = store
    planted = "sk-PLANTED-0123456789abcdefSECRET"
    monkeypatch.setenv("OPENAI_API_KEY", planted)
    monkeypatch.setenv("GOOGLE_API_KEY", planted + "G")
    # A provider that needs the key and fails at once (nothing listens on port 9): the rules fallback decides.
    output = _cli(
        "run", "--task", "digits", "--epochs", "2", "--controller", "openai-compatible:gpt-x@http://127.0.0.1:9/v1",
        "--tracking-uri", uri, "--experiment", "t", "--state-db", str(tmp_path / "g.sqlite"), "--decision-timeout", "20",
    )  # fmt: skip
    assert "fallback" in output
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`mimic.role` = 'child'")
    assert runs["metrics.fallbacks"].iloc[0] == 1
    hits = []
    for root, _, files in os.walk(tmp_path):
        for name in files:
            data = (Path(root) / name).read_bytes()
            if planted.encode() in data:
                hits.append(str(Path(root) / name))
    assert not hits, f"API key found in {hits}"
    traces = mlflow.search_traces(
        locations=[mlflow.get_experiment_by_name("t").experiment_id], return_type="list"
    )
    assert traces and all(planted not in t.to_json() for t in traces)
