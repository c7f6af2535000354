"""Training examples from the outcome bank (evals/training_data.py): the target is the measured best action (keep
unless beyond noise), the prompt is exactly what the adapter-equipped local controller is sent."""

from __future__ import annotations

import json

import pytest

from mimic_learn.agents.controller_data import TrainingExample, target_text
from mimic_learn.evals.bank import load_bank
from mimic_learn.evals.training_data import KEEP_REASON, bank_examples, label_entry


@pytest.fixture(scope="module")
def train_bank():
    return load_bank(split="train")


def _first(bank, pred):
    return next(e for e in bank if pred(e))


def test_labels_follow_measured_outcomes_at_the_longest_horizon(train_bank):
    for entry in train_bank:
        label = label_entry(entry)
        assert label.horizon == entry.horizon
        keep = entry.value("keep")
        if label.action == "keep":
            continue
        # a non-keep target is the best mean and beats keep
        assert entry.value(label.action) == max(entry.value(n) for n in entry.candidate_names())
        assert entry.value(label.action) > keep
        assert label.margin > 2 * label.stderr
    assert {label_entry(e).action for e in train_bank} >= {"keep", "rollback"}  # the split holds both


def test_examples_are_valid_rendered_for_the_adapter_and_target_the_label(train_bank):
    from mimic_learn.agents.local import LocalChatModel, candidate_values

    keep_entry = _first(
        train_bank, lambda e: label_entry(e).action == "keep" and e.situation.task == "digits"
    )
    move_entry = _first(
        train_bank, lambda e: label_entry(e).action.startswith("lr_") and e.situation.task == "digits"
    )
    out = bank_examples([keep_entry, move_entry])
    assert not out.skipped and len(out.examples) == 2
    keep_ex, move_ex = out.examples
    for ex in (keep_ex, move_ex):
        parsed = TrainingExample.model_validate(json.loads(json.dumps(ex)))
        target_text(parsed.target)  # the grammar can write it
        system, user = parsed.messages[0].content, parsed.messages[-1].content
        assert "rollback" in system  # offered to a model with an adapter
        assert "Decide the changes for the next epoch" in user and "```run-data" in user
        assert ex["source"]["split"] == "train" and ex["source"]["labeller"] == "outcomes"
    assert keep_ex["target"] == [{"tool": "keep_current", "args": {"reason": KEEP_REASON}}]
    (call,) = move_ex["target"]
    assert call["tool"] == "set_lr"
    cand = next(c for c in move_entry.candidates if c["name"] == label_entry(move_entry).action)
    assert call["args"]["lr"] == pytest.approx(cand["tool_calls"][0]["args"]["lr"], rel=1e-6)
    assert call["args"]["lr"] in candidate_values(1e-6, 1.0, move_entry.report["lr"], multiplicative=True)
    # the two situations' reports differ, so the prompts do
    assert keep_ex["messages"][-1]["content"] != move_ex["messages"][-1]["content"]
    # a model with an adapter is offered rollback; the bare built-in model is not
    assert LocalChatModel(adapter_path="x")._withheld_tools == ()
    assert LocalChatModel()._withheld_tools == ()  # the default: the built-in model with its shipped adapter
    assert LocalChatModel(adapter_path="none")._withheld_tools == ("rollback",)
