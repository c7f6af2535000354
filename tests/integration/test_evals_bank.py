"""The outcome bank (evals/): replayable situations, candidate rollouts over data orders, scoring a controller."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
from typer.testing import CliRunner

from mimic_learn.cli import app
from mimic_learn.evals import bank as bank_mod
from mimic_learn.evals.bank import Situation, build_bank, load_bank, replay, split_of
from mimic_learn.evals.score import (
    CONSTANTS,
    Evaluator,
    best_constant,
    bootstrap,
    paired_regret_gap,
    paired_verdict,
    score_numbers,
)
from mimic_learn.training.outcomes import OutcomeRecord

TINY = [
    Situation("tiny", 0, "none", 2),
    Situation("tiny", 0, "nan_spike", 2),
    Situation("tiny", 1, "lr_x30", 1),
]


@pytest.fixture(scope="module")
def tiny_bank(tmp_path_factory):
    """A 3-situation bank on a 4-epoch digits run (horizons 1 and the end), built once for the module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(bank_mod.TASKS, "tiny", {"config": {"task": "digits"}, "epochs": 4})
        path = tmp_path_factory.mktemp("bank") / "bank.jsonl"
        assert build_bank(TINY, path, resume=True) == 3
        yield path


def test_bank_lines_hold_every_candidate_per_order_and_horizon(tiny_bank):
    entries = load_bank(tiny_bank)
    assert [e.situation for e in entries] == TINY
    none, spike, lr30 = entries
    assert none.horizon == 2 and lr30.horizon == 3  # the run's end: 4 - epoch
    for e in entries:
        assert e.orders == 3
        names = e.candidate_names()
        assert names[0] == "keep"
        horizons = sorted({t["horizon"] for t in e.trials})
        assert horizons == sorted({1, 4 - e.situation.epoch})
        assert len(e.trials) == len(names) * 3 * len(horizons)
        records = e.records()  # the export-outcomes schema
        assert all(isinstance(r, OutcomeRecord) for r in records)
        assert records[0].rendered_report and records[0].config["task"] == "digits"
        keep = [r for r in records if r.action["name"] == "keep"]
        assert all(r.effect == 0.0 for r in keep)
    # a NaN epoch before the boundary: rollback is a candidate; a sound one: nothing to undo
    assert "rollback" in spike.candidate_names() and "rollback" not in none.candidate_names()
    assert spike.report["train_loss"] != spike.report["train_loss"] or spike.report["train_loss"] is None


def test_data_orders_differ_and_replay_is_deterministic(tiny_bank):
    entry = load_bank(tiny_bank)[0]
    per_order = [t["with_action"]["train_loss"] for t in entry.trials if t["action"]["name"] == "keep"]
    assert len(set(per_order)) > 1  # the orders are really different batch orders
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(bank_mod.TASKS, "tiny", {"config": {"task": "digits"}, "epochs": 4})
        a, b = replay(TINY[0]), replay(TINY[0])
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters(), strict=True):
        assert torch.equal(p, q), n


def test_resume_skips_finished_situations(tiny_bank, tmp_path):
    copy = tmp_path / "b.jsonl"
    copy.write_text(tiny_bank.read_text())
    assert build_bank(TINY, copy, resume=True) == 0
    assert copy.read_text() == tiny_bank.read_text()
    packed = tmp_path / "b.jsonl.gz"  # the shipped bank is gzip: read and resumed the same way
    packed.write_bytes(gzip.compress(tiny_bank.read_bytes()))
    assert build_bank(TINY, packed, resume=True) == 0
    assert [e.situation for e in load_bank(packed)] == TINY


def test_splits_are_by_whole_run_and_some_task_is_only_in_test():
    situations = bank_mod.default_situations(["digits", "mnist100"])
    assert len(situations) >= 60
    runs: dict = {}
    for s in situations:
        runs.setdefault(s.run, set()).add(split_of(s))
    assert all(len(v) == 1 for v in runs.values())
    by_task: dict = {}
    for s in situations:
        by_task.setdefault(s.task, set()).add(split_of(s))
    assert by_task["mnist100"] == {"test"}
    assert {"train", "dev", "test"} <= by_task["digits"]


def test_paired_verdict_needs_two_standard_errors():
    assert paired_verdict([0.9, 0.91, 0.92], [0.8, 0.8, 0.8], "max") == (True, False)
    assert paired_verdict([0.7, 0.72, 0.71], [0.8, 0.8, 0.8], "max") == (False, True)
    assert paired_verdict([0.85, 0.75, 0.8], [0.8, 0.8, 0.8], "max") == (False, False)  # noise
    assert paired_verdict([0.1, 0.1, 0.1], [0.2, 0.2, 0.2], "min") == (True, False)
    lo, hi = bootstrap([0.0, 1.0] * 20)
    assert lo < 0.5 < hi


@pytest.fixture(scope="module")
def scores(tiny_bank):
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(bank_mod.TASKS, "tiny", {"config": {"task": "digits"}, "epochs": 4})
        ev = Evaluator(load_bank(tiny_bank))
        out = ev.run(["oracle", "keep", "random", "constant:lr_down", "constant:rollback", "rules"])
        yield {s.controller: s for s in out}, ev


def test_anchor_scores(scores):
    table, ev = scores
    assert all(r.regret == 0.0 for r in table["oracle"].results)
    assert all(r.chosen == "keep" and r.win is False and r.harm is False for r in table["keep"].results)
    lr_down = table["constant:lr_down"].results
    assert [r.chosen for r in lr_down] == ["lr_x0.3"] * 3  # matched the candidate: scored from the bank
    assert all(r.valid for r in lr_down)
    rb = table["constant:rollback"].results
    # nothing to undo at a sound boundary: the call is rejected, scored as keep and counted invalid
    assert [r.valid for r in rb] == [False, True, False]
    assert rb[0].chosen == "keep" and rb[1].chosen == "rollback"
    for s in table.values():
        assert all(r.regret <= 1.0 + 1e-9 for r in s.results)


def test_in_between_decision_is_rolled_out(scores):
    table, ev = scores
    rules = table["rules"].results
    # after the NaN epoch rules rolls back and cuts lr tenfold: no candidate commits that, so it was rolled out
    assert rules[1].chosen == "other" and [c["name"] for c in rules[1].calls] == ["rollback", "set_lr"]
    assert ev.extra_rollouts >= 1
    gap, (lo, hi) = paired_regret_gap(table["rules"], table["keep"])
    assert lo <= gap <= hi
    assert best_constant(list(table.values())).controller.startswith("constant:")


def test_eval_controller_cli_on_a_bank_file(tiny_bank, monkeypatch):
    monkeypatch.setitem(bank_mod.TASKS, "tiny", {"config": {"task": "digits"}, "epochs": 4})
    res = CliRunner().invoke(
        app, ["eval-controller", "--bank-file", str(tiny_bank), "--split", "test", "--json"]
    )
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    names = [r["controller"] for r in rows]
    assert names[:3] == ["oracle", "keep", "random"] and "rules" in names
    assert rows[0]["regret"] == 0.0
    table = CliRunner().invoke(app, ["eval-controller", "--bank-file", str(tiny_bank), "--split", "test"])
    assert table.exit_code == 0, table.output
    assert "constant:wd_up" in table.output and "rules vs best constant (constant:" in table.output
    assert "regret 0.000 [0.00, 0.00]" in table.output  # the oracle row
    bad = CliRunner().invoke(app, ["eval-controller", "--bank-file", str(tiny_bank), "--split", "val"])
    assert bad.exit_code != 0 and "train, dev, test" in bad.output


def test_constant_controller_rejects_unknown_action():
    from mimic_learn.agents.providers import load_chat_model

    with pytest.raises(ValueError, match="lr_down"):
        load_chat_model("constant:sideways")


@pytest.mark.slow
def test_rules_beats_the_best_constant_policy_on_dev():
    """On the shipped bank's dev split, rules' regret is below the best constant policy's beyond the paired
    bootstrap interval."""
    entries = load_bank(split="dev")
    assert len(entries) >= 20
    out = Evaluator(entries).run(["rules", *CONSTANTS])
    best = best_constant(out)
    gap, (lo, hi) = paired_regret_gap(out[0], best)
    assert lo > 0, f"rules vs {best.controller}: regret gap {gap:.3f} [{lo:.3f}, {hi:.3f}]"


@pytest.mark.slow
def test_shipped_bank_replays_to_its_stored_numbers():
    """A shipped situation rebuilt from its seeds + config + epoch gives the stored outcomes (the bank is
    replayable, not a record of one machine's run)."""
    from mimic_learn.evals.bank import build_entry

    stored = next(e for e in load_bank(split="dev") if e.situation.pathology == "nan_spike")
    rebuilt = build_entry(stored.situation, orders=stored.orders)
    assert rebuilt.candidate_names() == stored.candidate_names()
    for name in stored.candidate_names():
        assert rebuilt.numbers(name) == pytest.approx(stored.numbers(name), abs=1e-9)


def test_rules_raise_the_lr_only_when_underfitting():
    from mimic_learn.agents.rules import rules_decision

    def report(train_acc, val_loss, lr=1e-3, epoch=3, total=12):
        hist = [
            {"epoch": i, "train_loss": v - 0.02, "val_loss": v, "train_acc": train_acc, "val_acc": 0.5}
            for i, v in enumerate(val_loss, 1)
        ]
        return {
            "history": hist,
            "lr": lr,
            "dropout": 0.2,
            "weight_decay": 0.0,
            "epoch": epoch,
            "total_epochs": total,
        }

    def raised(r) -> bool:
        call = rules_decision(r)[0]
        return call["name"] == "set_lr" and call["args"]["lr"] > r["lr"]

    falling = [1.95, 1.85, 1.75]
    up = rules_decision(report(0.5, falling))
    assert up[0]["name"] == "set_lr" and up[0]["args"]["lr"] == pytest.approx(3e-3)
    assert not raised(report(0.95, falling))  # fitted
    assert not raised(report(0.5, falling, lr=5e-3))  # x3 would pass the 0.01 cap
    assert not raised(report(0.5, falling, epoch=11))  # one epoch left
    assert not raised(report(0.5, [1.75, 1.85, 1.95]))  # validation loss rising


def test_regret_is_clipped_when_a_decision_beats_or_sinks_below_every_candidate_by_far():
    """The shipped dev split's stall situations: lr x10 is not a candidate and beats every candidate by ten
    times their spread. Normalised regret stops at -1; raw keeps the difference; beyond_best flags it."""
    entry = next(e for e in load_bank(split="dev") if e.situation.id == "digits/s3/lr_div100/e3")
    values = [entry.value(n) for n in entry.candidate_names()]
    best, worst = max(values), min(values)
    far = [best + 10 * (best - worst)] * entry.orders  # what the rolled-out lr x10 scored there
    s = score_numbers(entry, far, "other", None)
    assert s.regret == -1.0 and s.beyond_best
    assert s.raw == pytest.approx(-10 * (best - worst))
    near = [best + 0.5 * (best - worst)] * entry.orders
    assert score_numbers(entry, near, "other", None).regret == pytest.approx(-0.5)  # above the floor: as is
    keep = score_numbers(entry, entry.numbers("keep"), "keep", None)
    assert not keep.beyond_best and not keep.beyond_worst and 0 <= keep.regret <= 1
    # the other way: far below the worst candidate (clipping to 1e-5 on a diverging run) is capped at 2
    sunk = score_numbers(entry, [worst - 36 * (best - worst)] * entry.orders, "other", None)
    assert sunk.regret == 2.0 and sunk.beyond_worst and not sunk.beyond_best
    assert sunk.raw == pytest.approx(37 * (best - worst))
    below = [worst - 0.5 * (best - worst)] * entry.orders
    assert score_numbers(entry, below, "other", None).regret == pytest.approx(1.5)  # under the cap: as is


@pytest.mark.slow
def test_default_local_controller_rolls_back_after_a_nan_and_keeps_a_sound_run():
    """The shipped default (SmolLM2 + smollm2-bank-v2) on real dev situations: the planted NaN spike gets a
    rollback (the best measured action there), an unperturbed run gets keep; both are valid calls."""
    dev = load_bank(split="dev")
    nan = next(e for e in dev if e.situation.pathology == "nan_spike")
    sound = next(e for e in dev if e.situation.pathology == "none")
    (local,) = Evaluator([nan, sound]).run(["local"])
    assert [s.chosen for s in local.results] == ["rollback", "keep"]
    assert all(s.valid for s in local.results)
    assert local.results[0].regret == 0.0


def test_a_users_loop_is_banked_like_our_trainer(tmp_path):
    """diabetes: the regression loop under LoopTrainer (what Steering wraps), monitor val_mse, lower is better.
    Its RNG rides in the checkpoints, so data orders differ, replays repeat, and rollback undoes a NaN."""
    spike = Situation("diabetes", 0, "nan_spike", 28)  # 2 epochs left: horizons 1 and the end
    assert split_of(spike) == "test" and "diabetes" in bank_mod.DEFAULT_TASKS
    path = tmp_path / "bank.jsonl"
    assert build_bank([spike, Situation("diabetes", 1, "none", 28)], path, resume=True) == 2
    nan_entry, sound = load_bank(path)
    assert (nan_entry.monitor, nan_entry.mode, nan_entry.horizon) == ("val_mse", "min", 2)
    assert "val_mse" in nan_entry.rendered_report and "lower is better" in nan_entry.rendered_report
    rollback = [c["name"] for c in nan_entry.candidates if c["tool_calls"][0]["name"] == "rollback"]
    assert rollback and max(nan_entry.candidate_names(), key=nan_entry.value) == rollback[0]
    assert nan_entry.value(rollback[0]) > -1.0  # finite and below the target's variance: the NaN was undone
    keep = sound.numbers("keep")
    assert len(set(keep)) == 3  # three data orders, three different outcomes
    again = replay(Situation("diabetes", 1, "none", 28))
    assert again.history[-1].metrics["val_mse"] == sound.report["metrics"]["val_mse"]
