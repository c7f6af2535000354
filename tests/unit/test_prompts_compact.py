"""The `compact` prompt template: facts pre-digested from the report history, in words, for small models."""

from __future__ import annotations

import math
import re

import pytest

from mimic_learn.evals.scenarios import bank, scenario_trainer
from mimic_learn.graphs.runner import agent_report
from mimic_learn.prompts import render
from mimic_learn.prompts.templates import trend


def report(history: list[tuple], **extra) -> dict:
    """A report whose history rows are (train_loss, val_loss, train_acc, val_acc[, lr]) per epoch."""
    rows = []
    for i, row in enumerate(history, 1):
        t_loss, v_loss, t_acc, v_acc, *lr = row
        rows.append(
            {
                "epoch": i,
                "train_loss": t_loss,
                "val_loss": v_loss,
                "train_acc": t_acc,
                "val_acc": v_acc,
                "lr": lr[0] if lr else 1e-3,
                "dropout": 0.2,
            }
        )
    last = rows[-1]
    return {
        **last,
        "total_epochs": 20,
        "history": rows,
        "weight_decay": 0.0,
        "alpha": 0.0,
        "per_class_val_acc": [last["val_acc"]] * 10,
        "grad_norms": {"fc.weight": 0.3},
        "metrics": {},
        "monitor": "val_acc",
        "mode": "max",
    } | extra


def test_trend_words():
    assert trend([0.52, 0.4, 0.42, 0.48, 0.56, 0.66]) == "rising for 4 epochs (+18% in the last)"
    assert trend([1.0, 0.7, 0.49]) == "falling for 2 epochs (-30% in the last)"
    assert trend([0.36, 0.361, 0.359, 0.362]) == "flat for 3 epochs"
    assert trend([0.6, 0.9, 0.5, 1.0, 0.55]).startswith("swinging up and down")
    assert trend([0.05, 0.049, 0.05, 0.049]).startswith("flat (within 2%)")  # tiny swings are no swinging
    assert trend([0.6, 0.9, 2.5, 7.0]) == "rising for 3 epochs (x2.8 in the last)"
    assert trend([0.5, 0.45, float("nan")]) == "not finite (nan)"
    assert trend([0.5, float("nan"), 0.4]) == "first finite epoch"
    assert trend([0.5]) == "first epoch"


def test_compact_states_the_history_as_facts():
    overfit = report(
        [
            (0.5, 0.52, 0.85, 0.84),
            (0.3, 0.4, 0.91, 0.88),
            (0.18, 0.42, 0.95, 0.885),
            (0.1, 0.48, 0.97, 0.88),
            (0.05, 0.56, 0.99, 0.875),
            (0.03, 0.66, 0.995, 0.87),
        ]
    )
    text = render("compact", overfit)
    lines = text.splitlines()
    assert lines[lines.index("```run-data") + 1] == "Epoch 6 of 20."  # the first line of the quoted data
    assert "Training loss 0.03: falling for 5 epochs (-40% in the last)." in lines
    assert "Validation loss 0.66: rising for 4 epochs (+18% in the last)." in lines
    assert "Gap between validation and training loss 0.63: growing for 5 epochs." in lines
    assert "Validation accuracy 0.87 (higher is better): falling for 3 epochs (-0.005 in the last)." in lines
    assert "Now: learning rate 0.001, dropout 0.2, weight decay 0, alpha 0." in lines
    assert lines[-1] == "Decide the changes for the next epoch now."
    assert "Worst class" not in text  # every class is at the mean: nothing to say


def test_compact_names_non_finite_loss_lr_changes_stuck_classes_and_chance_level():
    nan = report([(0.5, 0.52, 0.85, 0.84), (0.45, 0.5, 0.86, 0.85, 0.5), (math.nan, math.nan, 0.1, 0.1, 0.5)])
    text = render("compact", nan)
    assert "Training loss nan: not finite (nan)." in text and "Validation loss nan: not finite (nan)." in text
    assert "Learning rate changed from 0.001 to 0.5 at epoch 2." in text
    assert "Every class is at chance accuracy (1/10)." in text

    stuck = report([(0.3, 0.36, 0.91, 0.895)] * 3)
    stuck["per_class_val_acc"] = [0.97, 0.96, 0.95, 0.12, 0.96, 0.94, 0.97, 0.95, 0.93, 0.94]
    assert "Worst class 3: accuracy 0.12 while the mean is 0.87." in render("compact", stuck)

    chance = report([(2.303, 2.303, 0.1, 0.1), (2.302, 2.302, 0.1, 0.1)])
    assert "Validation loss equals chance level (ln 10 = 2.30)." in render("compact", chance)


def test_compact_works_for_a_users_loop_that_reports_only_its_own_metrics():
    rows = [
        {"epoch": i, "lr": 0.01, "dropout": None, "val_mse": v}
        for i, v in enumerate([0.5, 0.4, 0.45, 0.6], 1)
    ]
    loop = {
        "epoch": 4,
        "total_epochs": 10,
        "history": rows,
        "train_loss": None,
        "val_loss": None,
        "train_acc": None,
        "val_acc": None,
        "lr": 0.01,
        "dropout": None,
        "weight_decay": 0.0,
        "alpha": 0.0,
        "per_class_val_acc": [],
        "grad_norms": {},
        "metrics": {"val_mse": 0.6, "r2": 0.3},
        "monitor": "val_mse",
        "mode": "min",
    }
    text = render("compact", loop)
    assert "val_mse 0.6 (lower is better): rising for 2 epochs (+33% in the last)." in text
    assert "Other metrics: r2 0.3." in text
    assert "loss" not in text.replace("val_mse", "")  # no invented losses
    assert "Metrics:" not in text  # the generic metrics line is not repeated


@pytest.mark.parametrize("scenario", bank(), ids=lambda s: s.name)
def test_compact_gives_facts_never_a_recommended_action(scenario):
    trainer = scenario_trainer(scenario)
    text = render("compact", agent_report(trainer, trainer.history[-1], scenario.total_epochs))
    facts = text.removesuffix("Decide the changes for the next epoch now.")
    advice = r"\b(should|try|consider|recommend|raise|lower|increase|decrease|reduce|roll ?back|keep)\b"
    assert not re.search(advice, facts, re.IGNORECASE), facts
    assert not re.search(r"set_|adjust|inspect_|keep_current", facts), facts
    assert len(text) < 800  # short: a few lines, no tables


def test_existing_templates_are_unchanged_by_compact():
    r = report([(0.5, 0.52, 0.85, 0.84), (0.4, 0.45, 0.88, 0.86)], metrics={"f1": 0.8})
    assert "Metrics: f1 0.8. The run is judged by val_acc (higher is better)." in render("full", r)
    assert "Recent epochs:" in render("full", r) and "Recent epochs:" not in render("compact", r)


def test_compact_states_the_gradient_norm_trend_from_the_runs_history():
    # agent_report puts each epoch's largest layer gradient norm in the history rows; compact states its trend.
    from mimic_learn.training import TrainConfig, Trainer

    trainer = Trainer.from_config(TrainConfig(task="digits", regime=100, epochs=3, num_threads=1))
    for _ in range(3):
        last = trainer.run_epoch()
    data = agent_report(trainer, last, total_epochs=3)
    norms = [max(r.grad_norms.values()) for r in trainer.history]
    assert [h["grad_norm"] for h in data["history"]] == norms
    line = next(
        x for x in render("compact", data).splitlines() if x.startswith("Largest layer gradient norm")
    )
    assert line == f"Largest layer gradient norm {max(last.grad_norms.values()):.2g}: {trend(norms)}."
    # A history row without gradient norms (an epoch that had none) leaves the line without a trend.
    r = report([(0.5, 0.52, 0.85, 0.84), (0.4, 0.45, 0.88, 0.86)])
    assert "Largest layer gradient norm 0.3." in render("compact", r)
