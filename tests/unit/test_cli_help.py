"""The CLI's help reads well on an 80-column terminal, and long commands show cells done / total and time left."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from typer.testing import CliRunner

from mimic_learn.cli import CellProgress, app, output
from mimic_learn.cli.reproduce import count_cells

COMMANDS = ["train", "run", "resume", "clean", "reproduce", "sweep", "eval-controller", "tools", "ui",
            "export-decisions"]  # fmt: skip


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_fits_80_columns(command):
    args = [command, "--help"] if command else ["--help"]
    result = CliRunner().invoke(app, args, prog_name="mimic-learn", terminal_width=80, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    too_wide = [line for line in lines if len(line) > 80]
    assert not too_wide, f"lines over 80 columns: {too_wide}"
    assert not any(ch in result.output for ch in "╭│╰"), "boxed rich panels are back"
    if command is None:  # every command listed with its whole one-line summary, none cut with '...'
        listed = [line for line in lines if line.startswith("  ") and line.strip().split(" ")[0] in COMMANDS]
        assert len(listed) == len(COMMANDS) and not any(line.endswith("...") for line in listed)
    else:
        assert lines[0].startswith(f"Usage: mimic-learn {command}")


def test_cell_progress_counts_done_failed_and_skipped_cells(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(
        output, "console", Console(file=out, width=80, force_terminal=True, color_system=None)
    )
    with CellProgress(6) as bar:
        bar.echo("skip paper/10/baseline/s0 (finished in run 1234abcd)")
        bar.echo("done paper/10/rules/s0 in 3s")
        bar.echo("retry paper/10/local/s0 (attempt failed; Tune restarts it)")
        bar.echo("failed paper/10/local/s0: RuntimeError: boom")
        task = bar.progress.tasks[0]
        assert (task.completed, task.total) == (2, 5)
        bar.echo("done paper/10/memory/s0 in 2s")
    text = out.getvalue()
    assert "3/5" in text and "done paper/10/rules/s0 in 3s" in text


def test_reproduce_cell_count():
    from mimic_learn.experiments import PAPER_ARMS

    assert count_cells("paper", ["10", "100"], [0, 1, 2], "") == 2 * 3 * len(PAPER_ARMS)
    assert count_cells("paper", ["10"], [0], "baseline,rules,pbt") == 3


def test_reproduce_seeds_take_ranges_and_a_bad_entry_says_what_to_write():
    def run(seeds):
        return CliRunner().invoke(
            app, ["reproduce", "paper", "--regimes", "10", "--arms", "baseline", "--seeds", seeds, "--dry-run"],
            terminal_width=200,
        )  # fmt: skip

    ok = run("0-2,5,1")
    assert ok.exit_code == 0, ok.output
    assert "dry run: 4 cells" in ok.output  # 0,1,2,5: the repeated 1 counts once
    for bad, says in [("9-2", "the range '9-2' is empty"), ("x", "ranges such as 0-9")]:
        result = run(bad)
        assert result.exit_code == 2 and says in result.output and "Traceback" not in result.output, (
            result.output
        )
