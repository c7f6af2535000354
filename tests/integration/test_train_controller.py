"""Training the embedded controller: the label rule, the example format, the exact target text, the GGUF LoRA
writer, and (slow) train -> export -> serve with llama.cpp."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mimic_learn.agents.controller_data import (
    ActionOutcomes,
    DatasetFormatError,
    TargetCall,
    TrainingExample,
    label_from_outcomes,
    load_examples,
    target_text,
)
from mimic_learn.agents.local import tool_calls_from_json
from mimic_learn.evals.training_data import rules_examples

# ------------------------------------------------------------------------------------------------ label rule


def test_label_picks_best_action_when_it_beats_keep_beyond_noise():
    label = label_from_outcomes(
        [
            ActionOutcomes("keep", {5: [0.80, 0.81, 0.79]}),
            ActionOutcomes("lr_x0.5", {5: [0.85, 0.86, 0.84]}),
            ActionOutcomes("dropout_up", {5: [0.70, 0.71, 0.69]}),
        ]
    )
    assert (label.action, label.best, label.beats_keep, label.horizon) == ("lr_x0.5", "lr_x0.5", True, 5)
    assert label.margin == pytest.approx(0.05)


def test_label_keeps_when_the_best_is_within_noise_of_keep():
    # mean advantage +0.01, but the paired differences (+0.06, -0.04, +0.01) have a standard error of ~0.03
    label = label_from_outcomes(
        [
            ActionOutcomes("keep", {5: [0.80, 0.84, 0.80]}),
            ActionOutcomes("lr_x2", {5: [0.86, 0.80, 0.81]}),
        ]
    )
    assert label.best == "lr_x2" and label.action == "keep" and not label.beats_keep


def test_label_uses_the_longest_horizon_every_action_has():
    outcomes = [
        ActionOutcomes("keep", {1: [0.5, 0.5], 5: [0.7, 0.71], 20: [0.9, 0.91]}),
        ActionOutcomes("lr_x2", {1: [0.6, 0.61], 5: [0.6, 0.6]}),  # better after 1 epoch, worse after 5
        ActionOutcomes("lr_x0.5", {1: [0.4, 0.4], 5: [0.8, 0.82], 20: [0.95, 0.96]}),
    ]
    label = label_from_outcomes(outcomes)
    assert label.horizon == 5 and label.action == "lr_x0.5"


def test_label_lower_is_better_and_ties_are_keep():
    lower = label_from_outcomes(
        [ActionOutcomes("keep", {3: [1.0, 1.1, 1.0]}), ActionOutcomes("wd_up", {3: [0.5, 0.6, 0.52]})],
        higher_is_better=False,
    )
    assert lower.action == "wd_up"
    tie = label_from_outcomes([ActionOutcomes("keep", {3: [1.0, 2.0]}), ActionOutcomes("x", {3: [1.0, 2.0]})])
    assert tie.action == "keep" and tie.best == "keep"


@pytest.mark.parametrize(
    ("outcomes", "message"),
    [
        ([ActionOutcomes("a", {1: [1.0, 2.0]})], "keep='keep' is not among the actions"),
        ([ActionOutcomes("keep", {1: [1.0]}), ActionOutcomes("a", {1: [1.0]})], ">= 2"),
        (
            [ActionOutcomes("keep", {1: [1.0, 2.0]}), ActionOutcomes("a", {1: [1.0, 2.0, 3.0]})],
            "keep: 2, a: 3",
        ),
        ([ActionOutcomes("keep", {1: [1.0, 2.0]}), ActionOutcomes("a", {2: [1.0, 2.0]})], "no horizon"),
        ([ActionOutcomes("keep", {1: [1.0, float("nan")]}), ActionOutcomes("a", {1: [1.0, 2.0]})], "finite"),
    ],
)
def test_label_rejects_outcomes_it_cannot_compare(outcomes, message):
    with pytest.raises(ValueError, match=message):
        label_from_outcomes(outcomes)


# ---------------------------------------------------------------------------------------- dataset format


def _example(**override) -> dict:
    ex = {
        "schema_version": 1,
        "messages": [
            {"role": "system", "content": "You control..."},
            {"role": "user", "content": "Epoch 3."},
        ],
        "target": [{"tool": "set_lr", "args": {"lr": 0.0005, "reason": "flat"}}],
        "source": {"scenario": "plateau"},
    }
    return {**ex, **override}


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_load_examples_reads_valid_lines_and_max_examples(tmp_path):
    path = _write(tmp_path / "d.jsonl", [_example(), "", _example(source={})])
    assert len(load_examples(path)) == 2
    assert len(load_examples(path, max_examples=1)) == 1


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("{not json", ":2: not JSON"),
        (
            _example(schema_version=2),
            ":2: schema_version=2; this version of mimic-learn reads schema_version 1",
        ),
        (_example(target=[]), ":2: target: List should have at least 1 item"),
        (_example(messages=[{"role": "system", "content": "x"}]), "must end with a user turn"),
        (_example(messages=[{"role": "robot", "content": "x"}]), ":2: messages.0.role"),
        (
            _example(target=[{"tool": "set_lr", "args": {"reason": "x" * 121}}]),
            "args.reason has 121 characters",
        ),
        (_example(extra=1), ":2: extra: Extra inputs are not permitted"),
    ],
)
def test_load_examples_names_the_line_and_field_and_returns_nothing(tmp_path, row, message):
    path = _write(tmp_path / "d.jsonl", [_example(), row])
    with pytest.raises(DatasetFormatError, match=message.replace("[", r"\[")):
        load_examples(path)


def test_load_examples_missing_file_and_bad_max(tmp_path):
    with pytest.raises(DatasetFormatError, match="does not exist"):
        load_examples(tmp_path / "nope.jsonl")
    with pytest.raises(DatasetFormatError, match=r"max_examples=0 is out of range \[1, inf\)"):
        load_examples(_write(tmp_path / "d.jsonl", [_example()]), max_examples=0)


def test_target_text_is_what_the_grammar_writes():
    # registry order (lr, then reason) even when given reversed; LLGuidance writes numbers positionally
    calls = [TargetCall(tool="set_lr", args={"reason": "tiny", "lr": 1e-05})]
    assert target_text(calls) == '{"tool": "set_lr", "args": {"lr": 0.00001, "reason": "tiny"}}'
    whole = [TargetCall(tool="set_dropout", args={"dropout": 1.0, "reason": 'say "hi"'})]
    assert target_text(whole) == '{"tool": "set_dropout", "args": {"dropout": 1, "reason": "say \\"hi\\""}}'
    two = calls + [TargetCall(tool="keep_current", args={"reason": "r"})]
    text = target_text(two)
    assert text.startswith("[{") and ', {"tool": "keep_current", "args": {"reason": "r"}}]' in text
    parsed, invalid = tool_calls_from_json(text)  # the local controller reads it back as the same calls
    assert not invalid and [(c["name"], c["args"]) for c in parsed] == [
        ("set_lr", {"lr": 1e-05, "reason": "tiny"}),
        ("keep_current", {"reason": "r"}),
    ]


def test_rules_examples_are_valid_and_target_what_rules_decides():
    examples = rules_examples(variants=1)
    assert len(examples) >= 20
    tools = set()
    for raw in examples:
        ex = TrainingExample.model_validate(raw)
        assert [m.role for m in ex.messages] == ["system", "user"]
        assert "You act only by calling tools" in ex.messages[0].content
        assert ex.messages[1].content.endswith("Decide the changes for the next epoch now.")
        tools.add(ex.target[0].tool)
    assert "rollback" not in tools  # withheld from the built-in model's grammar
    assert {"keep_current", "set_lr", "set_dropout"} <= tools
    nan = next(e for e in examples if e["source"]["scenario"] == "diverged_nan")
    assert nan["target"][0]["tool"] == "set_lr" and nan["target"][0]["args"]["lr"] == pytest.approx(0.05)


# ------------------------------------------------------------------------------------------------ GGUF LoRA


def _tiny_peft(seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mimic_learn.agents.train_controller import add_lora

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    model = add_lora(LlamaForCausalLM(config), rank=4, alpha=8.0, seed=seed)
    for module in model.modules():  # peft starts B at zero; make every matrix informative
        if hasattr(module, "lora_B") and "default" in module.lora_B:
            torch.nn.init.normal_(module.lora_B["default"].weight, std=0.1)
    return model


def test_gguf_adapter_round_trips_names_shapes_values_and_metadata(tmp_path):
    import gguf
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from mimic_learn.agents.train_controller import export_adapter

    model = _tiny_peft()
    size = export_adapter(model, tmp_path / "a.gguf", alpha=8.0)
    reader = gguf.GGUFReader(tmp_path / "a.gguf")
    field = reader.fields
    assert field["general.type"].contents() == "adapter"
    assert field["adapter.type"].contents() == "lora"
    assert field["adapter.lora.alpha"].contents() == pytest.approx(8.0)
    assert field["general.architecture"].contents() == "llama"
    tensors = {t.name: t for t in reader.tensors}
    modules = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
    assert set(tensors) == {f"blk.{b}.{m}.weight.lora_{ab}" for b in range(2) for m in modules for ab in "ab"}
    assert size == (tmp_path / "a.gguf").stat().st_size

    layer = model.base_model.model.model.layers[1]
    unpermute = LlamaTensorProcessor(config={"num_attention_heads": 4, "num_key_value_heads": 2})
    for gguf_name, hf, heads in (
        ("attn_q", layer.self_attn.q_proj, 4),
        ("attn_k", layer.self_attn.k_proj, 2),
    ):
        a = hf.lora_A["default"].weight.detach().numpy()
        b = hf.lora_B["default"].weight.detach().numpy()
        got_a, got_b = (
            tensors[f"blk.1.{gguf_name}.weight.lora_a"],
            tensors[f"blk.1.{gguf_name}.weight.lora_b"],
        )
        # GGUF shapes are ne order (in, rank) / (rank, out): what llama.cpp checks against the base tensor
        assert list(got_a.shape) == [a.shape[1], a.shape[0]] and list(got_b.shape) == [b.shape[1], b.shape[0]]
        np.testing.assert_array_equal(got_a.data, a)
        assert not np.array_equal(got_b.data, b)  # B's rows are in llama.cpp's order ...
        # ... which transformers' GGUF loader (the inverse of llama.cpp's converter) turns back into ours
        back = unpermute.process(np.array(got_b.data), f"blk.1.{gguf_name}.weight", n_head=heads).weights
        np.testing.assert_array_equal(back, b)
    v = layer.self_attn.v_proj.lora_B["default"].weight.detach().numpy()
    np.testing.assert_array_equal(tensors["blk.1.attn_v.weight.lora_b"].data, v)  # v is not permuted


def test_gguf_writer_refuses_an_adapter_over_the_cap(tmp_path):
    from mimic_learn.agents.train_controller import write_lora_gguf

    big = {"blk.0.attn_q.weight.lora_a": np.zeros((2600, 2000), np.float32)}  # 20.8 MB
    with pytest.raises(ValueError, match="over the 20,000,000-byte cap; lower --rank"):
        write_lora_gguf(big, tmp_path / "big.gguf", alpha=1.0)
    assert not (tmp_path / "big.gguf").exists()


def test_prefix_cache_gives_the_same_loss_as_the_whole_prompt():
    import torch

    from mimic_learn.agents.train_controller import Encoded, target_loss

    model = _tiny_peft()
    ex = Encoded(ids=list(range(3, 40)), n_prompt=30)
    with torch.no_grad():
        whole = target_loss(model, ex)
        cache = model(input_ids=torch.tensor([ex.ids[:20]]), use_cache=True).past_key_values
        cached = target_loss(model, ex, cache)
        again = target_loss(model, ex, cache)  # the shared cache is not consumed
    assert cached.item() == pytest.approx(whole.item(), rel=1e-5) and again.item() == pytest.approx(
        whole.item()
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"rank": 0}, r"rank=0 is out of range \[1, 256\]"),
        ({"lr": 5.0}, r"lr=5.0 is out of range"),
        ({"base": "gpt-9"}, "base='gpt-9' is not a known base; choose one of smollm2-135m"),
        ({"prefix_refresh": -1}, "prefix_refresh=-1 is out of range"),
    ],
)
def test_config_check_names_the_knob(override, message):
    from mimic_learn.agents.train_controller import TrainControllerConfig

    with pytest.raises(ValueError, match=message):
        TrainControllerConfig(**override).check()


def test_local_adapter_controller_string(tmp_path):
    from mimic_learn.agents.local import LocalModelMissingError
    from mimic_learn.agents.providers import default_prompt, load_chat_model

    assert load_chat_model("local").adapter_path is None
    model = load_chat_model(f"local:adapter={tmp_path}")
    assert model.adapter_path == tmp_path and model.model_path is None
    assert default_prompt(f"local:adapter={tmp_path}") == "compact"  # what the adapter was trained on
    with pytest.raises(LocalModelMissingError, match="adapter.gguf.*train-controller"):
        model.resolved_adapter_path()
    (tmp_path / "adapter.gguf").write_bytes(b"x")
    assert model.resolved_adapter_path() == tmp_path / "adapter.gguf"


def test_train_controller_cli_rejects_bad_data_before_loading_anything(tmp_path):
    from typer.testing import CliRunner

    from mimic_learn.cli import app

    path = _write(tmp_path / "d.jsonl", [_example(target=[])])
    result = CliRunner().invoke(app, ["train-controller", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "d.jsonl:1: target" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------- end to end (slow)


@pytest.mark.slow
def test_train_export_and_serve_changes_the_local_controller(tmp_path):
    """A few LoRA steps on real prompts, exported and served by llama.cpp through the local controller: it
    still makes valid calls, and on a prompt whose target the base model does not produce, it answers
    differently. Measured: 17 min on the shared 2-vCPU machine at load average ~10 (6 steps of ~750
    tokens, two base loads)."""
    from mimic_learn.agents.local import LocalChatModel
    from mimic_learn.agents.train_controller import TrainControllerConfig, train_controller
    from mimic_learn.evals.training_data import rules_situations

    situations = {ex["source"]["scenario"]: (ex, msgs, tools) for ex, msgs, tools in rules_situations(1)}
    chosen = [situations[name] for name in ("plateau_mid", "overfitting", "healthy_mid")]
    data = _write(tmp_path / "train.jsonl", [ex for ex, _, _ in chosen])
    summary = train_controller(
        data, tmp_path / "adapter", TrainControllerConfig(epochs=2, lr=3e-3, threads=2), command="test"
    )
    assert summary["steps"] == 6 and summary["epoch_loss"][-1] < summary["epoch_loss"][0]
    assert 0 < summary["adapter_bytes"] <= 20_000_000
    sidecar = json.loads((tmp_path / "adapter" / "training.json").read_text())
    assert {"command", "data_sha256", "seed", "base_model"} <= set(sidecar)

    base, adapted = LocalChatModel(), LocalChatModel(adapter_path=tmp_path / "adapter")
    changed = 0
    for ex, msgs, tools in chosen:
        before = base.bind_tools(tools).invoke(msgs).tool_calls
        after = adapted.bind_tools(tools).invoke(msgs).tool_calls
        assert len(after) == 1 and after[0]["name"] in {t.name for t in tools}  # a valid call
        target = ex["target"][0]
        if (before[0]["name"], before[0]["args"]) != (target["tool"], target["args"]):
            changed += (after[0]["name"], after[0]["args"]) != (before[0]["name"], before[0]["args"])
    assert changed >= 1


# ------------------------------------------------------------------------------ the shipped adapter
def test_shipped_adapter_is_listed_with_its_training_and_resolves_by_name():
    import hashlib

    from mimic_learn.agents.models import list_models
    from mimic_learn.agents.providers import load_chat_model
    from mimic_learn.evals.bank import BANK_V1, load_bank
    from mimic_learn.evals.training_data import label_entry

    (entry,) = [e for e in list_models() if e["name"] == "smollm2-bank-v1"]
    assert entry["kind"] == "adapter" and entry["installed"] and entry["bytes"] <= 20_000_000
    path = Path(entry["path"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    data = path.parent / "train.jsonl"
    assert hashlib.sha256(data.read_bytes()).hexdigest() == entry["training"]["data_sha256"]
    assert entry["training"]["base_model"] == "smollm2-135m" and entry["training"]["seed"] == 0
    # its data: one example per train situation of bank v1 (kept for it), targeting the measured best action
    examples = load_examples(data)
    labels = {e.situation.id: label_entry(e).action for e in load_bank(BANK_V1, split="train")}
    assert {ex.source["situation"]: ex.source["label"] for ex in examples} == labels
    assert all(ex.source["split"] == "train" for ex in examples)
    model = load_chat_model("local:adapter=smollm2-bank-v1")
    assert model.resolved_adapter_path() == path


@pytest.mark.slow
def test_shipped_adapter_decides_by_the_situation():
    """Not a constant policy: on dev situations it rolls back after a NaN epoch and raises a stalled lr."""
    from mimic_learn.agents.providers import load_chat_model
    from mimic_learn.evals.bank import load_bank, replay
    from mimic_learn.evals.score import decide

    model = load_chat_model("local:adapter=smollm2-bank-v1")
    dev = {e.situation.id: e for e in load_bank(split="dev")}
    chosen = {}
    for sid in ("digits/s3/nan_spike/e3", "digits/s3/none/e3"):
        situation = dev[sid].situation
        decision = decide(replay(situation), situation, model, prompt="compact")
        assert decision.valid, (sid, decision)
        chosen[sid] = [c["name"] for c in decision.calls]
    assert chosen["digits/s3/nan_spike/e3"] == ["rollback"]
    assert chosen["digits/s3/none/e3"] == ["set_lr"]
