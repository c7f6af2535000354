"""The command line as a user meets it: help texts, the tools listing, errors that say what to do."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mimic_learn.cli import app
from mimic_learn.tools import discover

runner = CliRunner()


def test_help_lists_every_command():
    """The Commands section of ``--help`` has one row per registered command (no more, no fewer), each starting
    with the first words of that command's one-line summary; each command's own ``--help`` works."""
    import re

    import typer

    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    commands = typer.main.get_command(app).commands
    panel = result.output.split("Commands:")[1]
    rows = dict(re.findall(r"^  ([a-z][a-z-]*)\s{2,}(\S.*?)\s*$", panel, flags=re.MULTILINE))
    assert set(rows) == set(commands) >= {"train", "run", "resume", "tools", "ui", "sweep", "reproduce"}
    for name, command in commands.items():
        first_words = " ".join(command.get_short_help_str(200).split()[:4])
        assert rows[name].startswith(first_words), (name, rows[name], first_words)
        own = runner.invoke(app, [name, "--help"])
        assert own.exit_code == 0 and f"Usage: root {name} [OPTIONS]" in own.output, (name, own.output[:300])


def test_tools_json_lists_every_registered_tool_with_its_schema():
    result = runner.invoke(app, ["tools", "--json"])
    assert result.exit_code == 0
    listed = json.loads(result.output)
    assert set(listed) == set(discover())
    assert listed["set_lr"]["mutating"] and not listed["inspect_grad_norms"]["mutating"]
    assert set(listed["set_lr"]["args"]["properties"]) == {"lr", "reason"}
    assert "current lr" not in listed["set_lr"]["description"]


def test_tools_table():
    result = runner.invoke(app, ["tools"])
    assert result.exit_code == 0 and "propose_weight_delta" in result.output and "mutating" in result.output


def test_missing_mnist_says_where_to_point(tmp_path):
    result = runner.invoke(app, ["train", "--task", "mnist", "--data-dir", str(tmp_path), "--no-track"])
    assert result.exit_code == 2
    assert "--data-dir" in result.output and "--download" in result.output


def test_unknown_controller_says_what_exists(tmp_path):
    result = runner.invoke(
        app, ["run", "--controller", "gpt4", "--no-track", "--state-db", str(tmp_path / "g.sqlite")]
    )
    assert result.exit_code == 2
    assert "rules" in result.output and "openai:gpt-4o" in result.output


def test_train_prints_a_line_per_epoch_and_test_accuracy():
    result = runner.invoke(app, ["train", "--epochs", "2", "--no-track"])
    assert result.exit_code == 0, result.output
    assert "epoch   1/2" in result.output and "epoch   2/2" in result.output
    assert "test accuracy" in result.output


def test_run_retry_options_reach_the_provider_and_the_run_params(tmp_path):
    import mlflow

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        result = runner.invoke(
            app,
            ["run", "--task", "digits", "--epochs", "1", "--controller", "rules", "--threads", "1",
             "--no-log-model", "--no-traces", "--tracking-uri", store, "--state-db", str(tmp_path / "s.sqlite"),
             "--retries", "0", "--max-retry-after", "5"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        mlflow.set_tracking_uri(store)
        (child,) = mlflow.search_runs(
            search_all_experiments=True, filter_string="tags.`mimic.role` = 'child'", output_format="list"
        )
        assert child.data.params["retries"] == "0"
        assert child.data.params["provider.max_retry_after_s"] == "5.0"
    finally:
        mlflow.set_tracking_uri(None)
    bad = runner.invoke(app, ["run", "--max-retry-after", "-1"])
    assert bad.exit_code == 2 and "max-retry-after" in bad.output


@pytest.mark.slow
def test_run_names_the_local_model_and_adapter_it_resolved_in_its_first_line_and_params(tmp_path):
    import mlflow

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    seen = {}
    try:
        for controller in ("local", "local:adapter=none"):
            result = runner.invoke(
                app,
                ["run", "--task", "digits", "--epochs", "2", "--controller", controller, "--threads", "1",
                 "--no-log-model", "--no-traces", "--tracking-uri", store, "--experiment", controller,
                 "--state-db", str(tmp_path / f"{len(seen)}.sqlite")],
            )  # fmt: skip
            assert result.exit_code == 0, result.output
            mlflow.set_tracking_uri(store)
            (child,) = mlflow.search_runs(
                experiment_names=[controller],
                filter_string="tags.`mimic.role` = 'child'",
                output_format="list",
            )
            seen[controller] = (" ".join(result.output.split()), child.data.params["controller_model"])
    finally:
        mlflow.set_tracking_uri(None)
    default_line, default_param = seen["local"]
    assert default_param == "SmolLM2-135M-Instruct.Q4_0.gguf + adapter smollm2-bank-v2"
    assert f"controller: local ({default_param})" in default_line
    assert seen["local:adapter=none"][1] == "SmolLM2-135M-Instruct.Q4_0.gguf, no adapter"


def _train_count(output: str) -> int:
    return int(output.split("| train ")[1].split()[0])


def test_rare_class_thins_one_class_of_the_training_subset_and_rejects_bad_values(tmp_path):
    plain = runner.invoke(app, ["train", "--epochs", "1", "--no-track"])
    rare = runner.invoke(app, ["train", "--epochs", "1", "--no-track", "--rare-class", "3:0.1"])
    assert plain.exit_code == 0 and rare.exit_code == 0, plain.output + rare.output
    removed = _train_count(plain.output) - _train_count(rare.output)
    tenth = _train_count(plain.output) / 10  # digits: about a tenth of the images are 3s; 90% of them go
    assert 0.8 * tenth < removed < tenth, removed
    malformed = runner.invoke(
        app, ["run", "--rare-class", "3", "--no-track", "--state-db", str(tmp_path / "g")]
    )
    assert malformed.exit_code == 2 and "e.g. 3:0.05" in malformed.output
    assert runner.invoke(app, ["train", "--rare-class", "3:0", "--no-track"]).exit_code == 2
    absent = runner.invoke(app, ["train", "--rare-class", "12:0.5", "--epochs", "1", "--no-track"])
    assert absent.exit_code != 0 and "class 12" in absent.output and "0, 1, 2" in absent.output
