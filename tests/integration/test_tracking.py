"""MLflow tracking against a temporary sqlite store: runs, metrics, traces, decisions table, plots, secrets."""

from __future__ import annotations

import json
import os
import re
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
    # the Traces list reads like a log: name, input and output previews; one session per run
    t1, t2 = by_epoch["1"].info, by_epoch["2"].info
    assert t1.tags["mlflow.traceName"] == "epoch 1 decision"
    assert re.fullmatch(
        r"epoch 1 · val acc \d\.\d{3} \(best \d\.\d{3}\) · lr 0\.001 · dropout 0\.2.*", t1.request_preview
    )
    assert t1.response_preview.startswith("set_lr 0.001→0.002 ✓ · set_lr ✗"), t1.response_preview
    assert t2.response_preview.startswith("set_dropout 0.2→0.3 ✓ · reflection: Decision after epoch 1"), (
        t2.response_preview
    )
    thread = client.get_run(child_id).data.tags["mimic.thread_id"]
    assert {t1.trace_metadata["mlflow.trace.session"], t2.trace_metadata["mlflow.trace.session"]} == {thread}
    # the full graph state stays in the root span's inputs
    root = next(s for s in by_epoch["2"].data.spans if s.parent_id is None)
    assert root.inputs["report"]["epoch"] == 2 and "history" in root.inputs["report"]

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


def test_trace_previews_read_like_a_log():
    from mimic_learn.tracking import decision_preview, report_preview

    history = [
        {"epoch": 52, "val_acc": 0.972, "monitor": "val_acc", "mode": "max", "metrics": {}},
        {"epoch": 53, "val_acc": 0.970, "lr": 0.01, "dropout": 0.2, "weight_decay": 0.0, "alpha": 0.0,
         "monitor": "val_acc", "mode": "max", "metrics": {}},
    ]  # fmt: skip
    assert (
        report_preview(history[-1], history)
        == "epoch 53 · val acc 0.970 (best 0.972) · lr 0.01 · dropout 0.2"
    )
    loop = {
        "epoch": 3,
        "lr": 0.05,
        "dropout": None,
        "monitor": "val_mse",
        "mode": "min",
        "metrics": {"val_mse": 0.5},
    }
    assert report_preview(loop, [loop | {"metrics": {"val_mse": 0.25}}, loop]) == (
        "epoch 3 · val mse 0.500 (best 0.250) · lr 0.05"
    )
    refused = {"tool": "set_dropout", "accepted": False, "reply": "refused: the budget of 1 tool calls ..."}
    decision = {
        "changes": [{"key": "lr", "value": "0.002", "tool": "set_lr", "reason": "slow down"}],
        "calls": [{"tool": "set_lr", "accepted": True, "reply": "ok"}, {"tool": "set_alpha", "accepted": False,
                  "reply": "alpha=3 is out of range"}] + [refused] * 7,
        "reflection": "Decision after epoch 52 (lr=0.01); validation accuracy fell. " + "x" * 300,
    }  # fmt: skip
    out = decision_preview(decision, {"lr": 0.01})
    assert out.startswith(
        "set_lr 0.01→0.002 ✓ · set_alpha ✗ · 7 refused · reflection: Decision after epoch 52"
    )
    assert out.endswith("…") and len(out) < 260
    assert decision_preview({"changes": [], "calls": [], "reflection": ""}, {}) == "no change"


def _run(status="FAILED", stage="active", tags=None, metrics=None, run_id="r1"):
    from types import SimpleNamespace

    info = SimpleNamespace(run_id=run_id, status=status, lifecycle_stage=stage, experiment_id="0")
    return SimpleNamespace(
        info=info, data=SimpleNamespace(tags=tags or {}, params={"lr": "0.001"}, metrics=metrics or {})
    )


def test_resume_rules_name_why_a_run_cannot_continue(tmp_path):
    """tracking.runs.resumable: the rules `mimic-learn resume` prints, without a store."""
    from mimic_learn.tracking import tags
    from mimic_learn.tracking.runs import RunRefused, resumable

    folder = tmp_path / "run-abc"
    base = {tags.ROLE: "child", tags.THREAD_ID: "run-abc", tags.ARM: "rules-log_only-full-s0"}
    with pytest.raises(RunRefused, match="wrote no trainer checkpoints"):
        resumable(_run(tags=base))
    gone = base | {tags.CHECKPOINT_DIR: str(folder), tags.CHECKPOINTS: "cleaned"}
    with pytest.raises(
        RunRefused, match=r"folder .*run-abc is gone \(`mimic-learn clean --all` removed it\)"
    ):
        resumable(_run(tags=gone, metrics={"val_loss": 0.3}))
    with pytest.raises(RunRefused, match="--keep-checkpoints"):
        resumable(_run(status="FINISHED", tags=base | {tags.CHECKPOINTS: "removed"}))
    folder.mkdir()
    found = resumable(_run(tags=base | {tags.CHECKPOINT_DIR: str(folder), tags.TRACES: "False"}))
    assert (found.thread_id, found.checkpoint_dir, found.arm) == ("run-abc", str(folder), base[tags.ARM])
    assert (found.traces, found.log_model, found.parent_id, found.params) == (
        False,
        True,
        None,
        {"lr": "0.001"},
    )


def test_clean_verdicts_keep_only_resumable_runs():
    from mimic_learn.tracking.runs import clean_verdict

    assert clean_verdict(None, False) == (True, "orphan: no run of this thread in the tracking store")
    assert clean_verdict(_run(status="FINISHED"), False)[0]
    assert clean_verdict(_run(stage="deleted"), False) == (True, "deleted in MLflow (run r1)")
    assert clean_verdict(_run(status="KILLED"), False) == (False, "KILLED, resumable: mimic-learn resume r1")
    assert clean_verdict(_run(status="RUNNING"), True)[0]


def test_clean_plan_refuses_a_missing_store_and_lists_nothing_without_folders(tmp_path):
    from mimic_learn.tracking.runs import RunRefused, clean_plan

    state_db = str(tmp_path / "state" / "graph_state.sqlite")
    missing_store = f"sqlite:///{tmp_path / 'nowhere.db'}"
    assert clean_plan(state_db, missing_store).folders == []  # no folder: the store is not even needed
    (tmp_path / "state" / "checkpoints" / "run-x").mkdir(parents=True)
    with pytest.raises(RunRefused, match="no MLflow store at"):
        clean_plan(state_db, missing_store)


def test_note_text_is_checked_before_any_store_is_touched():
    from mimic_learn.tracking.runs import NOTE_LIMIT, RunRefused, check_note_text

    check_note_text("class 7 recall matters")
    with pytest.raises(RunRefused, match="the note is empty"):
        check_note_text("")
    with pytest.raises(RunRefused, match=f"at most {NOTE_LIMIT}"):
        check_note_text("x" * (NOTE_LIMIT + 1))
