"""The controller graph with fake chat models: knobs, malformed calls, budget, reflection, fallbacks, memory."""

from __future__ import annotations

import math

import pytest
import torch
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from mimic_learn.agents.protocol import REPORT_KEY
from mimic_learn.agents.providers import ProviderOptions
from mimic_learn.agents.reflection.revert_on_harm import RevertOnHarm
from mimic_learn.agents.rules import rules_decision
from mimic_learn.agents.scripted import ScriptedChatModel
from mimic_learn.graphs.graph import AgentConfig
from mimic_learn.graphs.runner import agent_report

from ..agent_helpers import FailingChatModel, HangingChatModel, make_runner


def call(name, **args):
    return {"name": name, "args": args}


def scripted(*decisions, **kwargs) -> ScriptedChatModel:
    return ScriptedChatModel(decisions=list(decisions), **kwargs)


def test_knobs_change_as_the_calls_say(tmp_path):
    model = scripted(
        {
            "epoch": 1,
            "tool_calls": [
                call("set_lr", lr=0.01, reason="faster"),
                call("set_dropout", dropout=0.35, reason="reg"),
            ],
        },
        {
            "epoch": 2,
            "tool_calls": [
                call("set_weight_decay", weight_decay=1e-3, reason="l2"),
                call("set_alpha", alpha=0.2, reason="blend"),
            ],
        },
    )
    runner = make_runner(tmp_path, model=model, epochs=3)
    first = runner.step()
    assert first.decision["changes"] and runner.trainer.lr == 0.01 and runner.trainer.dropout == 0.35
    second = runner.step()
    assert [c["key"] for c in second.decision["changes"]] == ["weight_decay", "alpha"]
    assert runner.trainer.weight_decay == 1e-3 and runner.trainer.alpha == 0.2
    report = runner.step().report
    assert (report.lr, report.dropout, report.weight_decay, report.alpha) == (0.01, 0.35, 1e-3, 0.2)


def test_malformed_call_gets_an_error_message_and_the_corrected_retry_succeeds(tmp_path):
    model = scripted(
        {
            "epoch": 1,
            "turns": [
                [call("set_lr", lr="fast", reason="bad type")],
                [call("set_lr", lr=0.5, reason="out of trust region")],
                [call("set_lr", lr=0.004, reason="corrected")],
            ],
        }
    )
    runner = make_runner(tmp_path, model=model)
    outcome = runner.step()
    tool_msgs = [m for m in outcome.state["messages"] if isinstance(m, ToolMessage)]
    assert [m.status for m in tool_msgs] == ["error", "error", "success"]
    assert "lr=" in tool_msgs[0].content and "current lr" in tool_msgs[0].content
    assert "out of range" in tool_msgs[1].content and "0.003" in tool_msgs[1].content  # names the current lr
    assert outcome.state["invalid_calls"] == 2
    assert runner.trainer.lr == 0.004


def test_tool_call_budget_stops_a_looping_model(tmp_path):
    looping = scripted(
        {"epoch": 1, "tool_calls": [call("inspect_history", last_n=3)] * 3}, repeat_last_turn=True
    )
    runner = make_runner(tmp_path, model=looping, budget=7)
    outcome = runner.step()
    state = outcome.state
    assert state["tool_calls_used"] == 7
    assert state["refused_calls"] == 2  # third message: 1 allowed, 2 refused before ToolNode ran them
    refused = [m for m in state["messages"] if isinstance(m, ToolMessage) and m.content.startswith("refused")]
    assert len(refused) == 2 and all(m.status == "error" for m in refused)
    every_call_answered = {
        c["id"] for m in state["messages"] if isinstance(m, AIMessage) for c in m.tool_calls
    }
    assert every_call_answered == {m.tool_call_id for m in state["messages"] if isinstance(m, ToolMessage)}


def test_budget_applies_within_one_message(tmp_path):
    many = scripted(
        {"epoch": 1, "tool_calls": [call("set_lr", lr=0.001 * (1 + i / 100), reason="x") for i in range(20)]}
    )
    runner = make_runner(tmp_path, model=many, budget=4)
    state = runner.step().state
    assert state["tool_calls_used"] == 4 and state["refused_calls"] == 16
    assert abs(runner.trainer.lr - 0.00103) < 1e-12  # the 4th (last allowed) call wins


def test_invalid_tool_calls_are_answered_and_counted(tmp_path):
    class BrokenJson(ScriptedChatModel):
        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            from langchain_core.outputs import ChatGeneration, ChatResult

            bad = {
                "name": "set_lr",
                "args": '{"lr": 0.0',
                "id": "bad1",
                "error": "invalid JSON",
                "type": "invalid_tool_call",
            }
            if any(isinstance(m, ToolMessage) for m in messages):
                return ChatResult(generations=[ChatGeneration(message=AIMessage(content="ok"))])
            return ChatResult(
                generations=[ChatGeneration(message=AIMessage(content="", invalid_tool_calls=[bad]))]
            )

    runner = make_runner(tmp_path, model=BrokenJson(decisions=[]))
    lr = runner.trainer.lr
    state = runner.step().state
    assert state["invalid_calls"] == 1
    assert runner.trainer.lr == lr


def test_decide_sees_only_this_epochs_messages(tmp_path):
    model = scripted(
        {"epoch": 1, "tool_calls": [call("keep_current", reason="fine")]},
        {"epoch": 2, "tool_calls": [call("keep_current", reason="fine")]},
    )
    runner = make_runner(tmp_path, model=model, epochs=3)
    runner.step()
    state = runner.step().state
    humans = [m for m in state["messages"] if isinstance(m, HumanMessage)]
    assert len(humans) == 1 and humans[0].additional_kwargs["mimic_report"]["epoch"] == 2


def test_log_only_reflection_changes_nothing_and_adds_nothing(tmp_path):
    model = scripted({"epoch": 1, "tool_calls": [call("set_lr", lr=0.01, reason="x")]})
    runner = make_runner(tmp_path, model=model, reflection="log_only")
    runner.step()
    state = runner.step().state
    assert "Decision after epoch 1" in state["reflection"] and "lr=0.01" in state["reflection"]
    assert state["inject"] == "" and not state["reverted"]
    human = next(m for m in state["messages"] if isinstance(m, HumanMessage))
    assert "Decision after epoch 1" not in human.content


def test_memory_reflection_reaches_the_next_prompt(tmp_path):
    model = scripted({"epoch": 1, "tool_calls": [call("set_lr", lr=0.01, reason="x")]})
    runner = make_runner(tmp_path, model=model, reflection="memory", epochs=4)
    runner.step()
    runner.step()
    state = runner.step().state
    human = next(m for m in state["messages"] if isinstance(m, HumanMessage))
    assert "Your recent decisions" in human.content and "lr=0.01" in human.content
    assert [m["epoch"] for m in state["memory"]] == [1, 2]


def test_revert_on_harm_restores_the_pre_decision_checkpoint_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(RevertOnHarm, "acc_threshold", -1.0)  # every change counts as harmful
    model = scripted(
        {
            "epoch": 1,
            "tool_calls": [call("set_lr", lr=0.02, reason="x"), call("set_dropout", dropout=0.5, reason="y")],
        }
    )
    runner = make_runner(tmp_path, model=model, reflection="revert_on_harm", epochs=3)
    runner.step()
    before = {k: v.clone() for k, v in runner.trainer.pre_decision[1]["model"].items()}
    lr_before = runner.trainer.pre_decision[1]["optimizer"]["param_groups"][0]["lr"]
    assert runner.trainer.lr == 0.02
    outcome = runner.step()
    assert outcome.state["reverted"] and "reverted" in outcome.state["inject"]
    for name, tensor in runner.trainer.model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert runner.trainer.lr == lr_before and runner.trainer.dropout == 0.2
    human = next(m for m in outcome.state["messages"] if isinstance(m, HumanMessage))
    assert "was reverted" in human.content


def test_revert_on_harm_never_reverts_a_decision_that_changed_nothing(tmp_path, monkeypatch):
    # Seen in the blog proxy: setting weight decay to the value it already had was recorded as a change, judged
    # harmful after a noisy epoch and reverted, again and again (rolling the schedule back each time).
    monkeypatch.setattr(RevertOnHarm, "acc_threshold", -1.0)  # every real change counts as harmful
    model = scripted({"epoch": 1, "tool_calls": [call("set_dropout", dropout=0.2, reason="same as now")]})
    runner = make_runner(tmp_path, model=model, reflection="revert_on_harm", epochs=3)
    first = runner.step()
    assert runner.trainer.dropout == 0.2
    assert first.decision["changes"] == [] and first.decision["kept"] == ["dropout already 0.2 (no change)"]
    after = {k: v.clone() for k, v in runner.trainer.model.state_dict().items()}
    second = runner.step()
    assert not second.state["reverted"]
    assert second.state["reflection"].endswith(
        "Verdict: nothing was changed, so there is nothing to credit or blame."
    )
    assert any(not torch.equal(v, after[k]) for k, v in runner.trainer.model.state_dict().items())


def test_revert_on_harm_keeps_a_helpful_decision(tmp_path, monkeypatch):
    monkeypatch.setattr(RevertOnHarm, "acc_threshold", 1.0)
    monkeypatch.setattr(RevertOnHarm, "loss_threshold", 1e9)
    model = scripted({"epoch": 1, "tool_calls": [call("set_lr", lr=0.01, reason="x")]})
    runner = make_runner(tmp_path, model=model, reflection="revert_on_harm")
    runner.step()
    outcome = runner.step()
    assert not outcome.state["reverted"] and runner.trainer.lr == 0.01


def test_checkpointer_restores_graph_memory_after_a_restart(tmp_path):
    model = scripted({"epoch": 1, "tool_calls": [call("set_lr", lr=0.01, reason="x")]})
    first = make_runner(tmp_path, model=model, reflection="memory", epochs=4)
    first.step()
    first.step()
    first.step()
    memory = first.graph_state()["memory"]
    thread = first.thread_id
    first.close()
    second = make_runner(tmp_path, model=model, reflection="memory", epochs=4)
    second.thread_id = thread
    assert second.graph_state()["memory"] == memory and len(memory) == 2
    assert second.graph_state()["last_decision"]["epoch"] == 3


def test_provider_failure_falls_back_to_rules_and_is_recorded(tmp_path):
    failing = FailingChatModel()
    runner = make_runner(tmp_path, model=failing, provider=ProviderOptions(retries=2, retry_wait=False))
    outcome = runner.step()
    assert failing.calls == 3  # first try + 2 retries
    assert outcome.state["fallbacks"] and "connection refused" in outcome.state["fallbacks"][0]
    assert outcome.decision["calls"], "the rules fallback made the decision"
    assert runner.step().report.epoch == 2  # the run goes on


def test_a_retry_after_beyond_the_cap_is_the_recorded_fallback_reason(tmp_path):
    from types import SimpleNamespace

    class RateLimited(FailingChatModel):
        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            self.calls += 1
            error = RuntimeError("429 Too Many Requests")
            error.response = SimpleNamespace(status_code=429, headers={"retry-after": "120"})
            raise error

    model = RateLimited()
    provider = ProviderOptions(retries=2, retry_wait=True, max_retry_after_s=60)
    outcome = make_runner(tmp_path, model=model, provider=provider).step()
    assert model.calls == 1  # no blind retry after the provider asked for 120 s
    reasons = " ".join(outcome.state["fallbacks"])
    assert "retry after 120 s" in reasons and "max_retry_after_s=60" in reasons, reasons
    assert outcome.decision["calls"], "the rules fallback made the decision"


def test_hanging_provider_hits_the_decision_timeout(tmp_path):
    import time

    runner = make_runner(tmp_path, model=HangingChatModel(seconds=3), decision_timeout_s=0.3)
    start = time.perf_counter()
    outcome = runner.step()
    assert time.perf_counter() - start < 2.5
    assert any("timeout" in f for f in outcome.state["fallbacks"])


def test_rules_controller_end_to_end(tmp_path):
    """report -> rules -> tool call -> commit -> the next epoch trains with it. At lr 1e-5 the digits model barely
    moves (training accuracy ~0.1): with two or more epochs left the underfitting rule triples the lr; with one
    left it cannot pay off, and the plateau rule halves it."""
    runner = make_runner(tmp_path, controller="rules", epochs=5)
    runner.trainer.set_lr(1e-5)
    result = runner.run()
    runner.close()
    assert [o.report.epoch for o in result.epochs] == [1, 2, 3, 4, 5]
    decisions = [o.decision for o in result.epochs if o.decision]
    assert [[c["tool"] for c in d["calls"]] for d in decisions] == [["keep_current"]] + [["set_lr"]] * 3
    assert all(c["accepted"] for d in decisions for c in d["calls"])
    # Each decision is exactly what the rules say for the report the graph saw, and what they staged is what the
    # next epoch trained with.
    for outcome, after in zip(result.epochs[:-1], result.epochs[1:], strict=True):
        expected = rules_decision(outcome.state["report"])
        assert [(c["tool"], c["args"]) for c in outcome.decision["calls"]] == [
            (c["name"], c["args"]) for c in expected
        ]
        lr = next((c["args"]["lr"] for c in expected if c["name"] == "set_lr"), outcome.report.lr)
        assert math.isclose(after.report.lr, lr), (after.report.lr, lr)
    lrs = [o.report.lr for o in result.epochs]
    assert all(math.isclose(a, b) for a, b in zip(lrs, [1e-5, 1e-5, 3e-5, 9e-5, 4.5e-5], strict=True)), lrs
    # the test figure is the final model's
    assert result.test.acc == runner.trainer.evaluate("test").acc


def test_rules_controller_lowers_lr_on_a_plateau():
    from mimic_learn.agents.rules import rules_decision

    hist = [
        {
            "epoch": i,
            "train_loss": 0.5 - i * 0.01,
            "val_loss": v,
            "train_acc": 0.9,
            "val_acc": 0.9,
            "lr": 0.01,
            "dropout": 0.2,
        }
        for i, v in enumerate([0.5, 0.4, 0.41, 0.405], 1)
    ]
    calls = rules_decision({"history": hist, "lr": 0.01, "dropout": 0.2, "weight_decay": 0.0})
    assert calls[0]["name"] == "set_lr" and calls[0]["args"]["lr"] == 0.005
    diverged = hist + [{**hist[-1], "epoch": 5, "train_loss": float("nan")}]
    assert [c["name"] for c in rules_decision({"history": diverged, "lr": 0.01, "dropout": 0.2})] == [
        "rollback",
        "set_lr",
    ]
    overfit = [
        {**hist[0], "epoch": i, "train_loss": t, "val_loss": v}
        for i, (t, v) in enumerate([(0.3, 0.5), (0.2, 0.55), (0.1, 0.6)], 1)
    ]
    assert rules_decision({"history": overfit, "lr": 0.01, "dropout": 0.2})[0]["name"] == "set_dropout"


def test_scripted_controller_from_file_end_to_end(tmp_path):
    script = tmp_path / "s.yaml"
    script.write_text(
        "decisions:\n  - epoch: 2\n    tool_calls:\n      - {name: set_lr, args: {lr: 0.001, reason: slower}}\n"
    )
    runner = make_runner(tmp_path, controller=f"scripted:{script}", epochs=3)
    result = runner.run()
    assert result.epochs[0].decision["calls"] == []
    assert result.epochs[1].decision["changes"][0]["key"] == "lr"
    assert result.epochs[2].report.lr == 0.001


def test_every_k_epochs(tmp_path):
    runner = make_runner(tmp_path, controller="rules", epochs=5)
    runner.spec.every = 2
    result = runner.run()
    assert [o.report.epoch for o in result.epochs if o.decision] == [2, 4]


def test_prompt_templates_show_only_their_arm_signal(tmp_path):
    from mimic_learn.prompts import render

    runner = make_runner(tmp_path, controller="rules", epochs=2)
    runner.step()
    report = agent_report(runner.trainer, runner.trainer.history[-1], 2)
    losses = render("losses", report)
    assert "train loss" in losses and "per class" not in losses and "gradient" not in losses
    assert "per class" in render("losses+per_class", report)
    assert "gradient" in render("losses+grad_norms", report)
    assert "Learning rate by epoch" in render("losses+lr_history", report)
    paper = render("paper", report)
    assert "validation accuracy" in paper and "dropout" in paper and "loss" not in paper


def test_langgraph_json_points_at_a_graph_factory():
    import asyncio
    import importlib.util
    import json
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    spec = json.loads((repo / "langgraph.json").read_text())
    path, _, attr = spec["graphs"]["mimic_controller"].partition(":")
    module_spec = importlib.util.spec_from_file_location("studio_graph", repo / path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    graph = asyncio.run(getattr(module, attr)())  # async: langgraph dev awaits it off its event loop
    nodes = set(graph.get_graph(xray=1).nodes)  # `prepare`, then the controller graph as a subgraph
    controller = {f"controller:{n}" for n in ("observe", "reflect", "decide", "tools", "apply")}
    assert {"prepare"} | controller <= nodes


def test_a_guard_note_reaches_the_prompt(tmp_path):
    from mimic_learn.prompts import render

    runner = make_runner(tmp_path, controller="rules", epochs=2)
    runner.step()
    report = agent_report(runner.trainer, runner.trainer.history[-1], 2)
    assert "Guard:" not in render("losses", report)
    report["guard"] = "loss was NaN: rolled back to epoch 1"
    assert "Guard: loss was NaN: rolled back to epoch 1" in render("losses", report)


def test_llm_critic_writes_the_reflection(tmp_path):
    model = scripted({"epoch": 1, "tool_calls": [call("set_lr", lr=0.01, reason="x")]})
    runner = make_runner(tmp_path, model=model, reflection="log_only", llm_critic=True)
    runner.step()
    state = runner.step().state
    assert (
        state["reflection"].startswith("Decision after epoch 1")
        and "script done for this epoch" in state["reflection"]
    )


POLICIES_WITH_A_CRITIQUE = ["log_only", "memory", "revert_on_harm", "counterfactual"]


@pytest.mark.parametrize("policy", POLICIES_WITH_A_CRITIQUE)
def test_the_llm_critic_writes_the_critique_whatever_the_policy(tmp_path, policy):
    model = scripted({"epoch": 1, "tool_calls": [call("set_lr", lr=0.004, reason="x")]})
    runner = make_runner(tmp_path, model=model, reflection=policy, critic="llm", epochs=4)
    runner.step()
    state = runner.step().state
    runner.close()
    # the counterfactual policy's facts are its measured verdict; the others' the before/after numbers
    facts = "vs not acting" if policy == "counterfactual" else "Decision after epoch 1"
    assert facts in state["reflection"] and "script done for this epoch" in state["reflection"], state[
        "reflection"
    ]
    assert "Verdict:" not in state["reflection"]  # the numbers critic did not write it


@pytest.mark.parametrize("policy", ["log_only", "memory", "revert_on_harm"])
def test_the_numbers_critic_writes_a_verdict_whatever_the_policy(tmp_path, policy):
    model = scripted({"epoch": 1, "tool_calls": [call("set_lr", lr=0.004, reason="x")]})
    runner = make_runner(tmp_path, model=model, reflection=policy, epochs=3)
    runner.step()
    reflection = runner.step().state["reflection"]
    runner.close()
    assert reflection.startswith("Decision after epoch 1") and "Verdict: " in reflection, reflection
    assert "script done" not in reflection


class CriticOutage(ScriptedChatModel):
    """A provider that decides as scripted but fails every request that carries no report: the critic's."""

    critic_requests: int = 0

    @property
    def _llm_type(self) -> str:
        return "critic-outage"  # not a deterministic controller: its requests are retried

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        if not any(REPORT_KEY in m.additional_kwargs for m in messages):
            self.critic_requests += 1
            raise ConnectionError("critic endpoint refused the connection")
        return super()._generate(messages, stop, run_manager, **kwargs)


@pytest.mark.parametrize("fallback", ["rules", None])
def test_a_provider_error_in_the_llm_critic_never_ends_the_run(tmp_path, fallback):
    model = CriticOutage(decisions=[{"epoch": 1, "tool_calls": [call("set_lr", lr=0.004, reason="x")]}])
    provider = ProviderOptions(retries=2, retry_wait=False, fallback=fallback)
    runner = make_runner(
        tmp_path, model=model, provider=provider, critic="llm", reflection="memory", epochs=4
    )
    outcomes = [runner.step() for _ in range(4)]
    runner.close()
    assert [o.report.epoch for o in outcomes] == [1, 2, 3, 4]  # the run went on to its end
    reflection = outcomes[1].state["reflection"]
    assert model.critic_requests == 2 * 3  # epochs 2 and 3 judged a decision: first try + 2 retries each
    # the numbers' verdict stands in, and the critique says why the critic did not answer
    assert reflection.startswith("Decision after epoch 1") and "Verdict: " in reflection, reflection
    assert "the critic did not answer" in reflection and "refused the connection" in reflection, reflection
    assert not outcomes[1].state["fallbacks"]  # the controller itself never failed
    assert outcomes[0].decision["changes"][0]["key"] == "lr"


def test_agent_config_names_its_critic():
    assert AgentConfig().critic == "numbers"
    assert AgentConfig(llm_critic=True).critic == "llm"  # the earlier spelling (runs logged with it resume)
    with pytest.raises(ValueError, match="critic='gpt'.*numbers, llm"):
        AgentConfig(critic="gpt")


def test_observe_starts_every_per_decision_field_afresh_and_the_decision_is_a_typed_record(tmp_path):
    from mimic_learn.graphs.state import DecisionFields, new_decision
    from mimic_learn.tools.records import CallRecord, Change, Decision

    assert set(new_decision()) == set(DecisionFields.__annotations__)
    model = scripted({"epoch": 1, "tool_calls": [call("set_lr", lr=0.004, reason="x")]})
    runner = make_runner(tmp_path, model=model, epochs=2)
    decision = runner.step().decision
    runner.close()
    assert set(decision) <= set(Decision.__annotations__), set(decision) - set(Decision.__annotations__)
    assert set(decision["changes"][0]) == set(Change.__annotations__)
    assert set(decision["calls"][0]) == set(CallRecord.__annotations__)


def test_a_critic_reply_without_text_leaves_the_numbers_verdict():
    from langchain_core.runnables import RunnableLambda

    from mimic_learn.agents.reflection import ReflectionContext

    previous = {
        "epoch": 1,
        "changes": [{"key": "lr", "value": "0.004", "reason": "x", "tool": "set_lr"}],
        "base_report": {"val_acc": 0.5, "val_loss": 1.0},
    }
    ctx = ReflectionContext(
        previous=previous,
        report={"val_acc": 0.6, "val_loss": 0.9},
        controls=None,
        memory=[],
        critic=RunnableLambda(lambda messages: AIMessage(content="")),
    )
    assert ctx.critique() == (
        "Decision after epoch 1 (lr=0.004); validation accuracy 0.5000 -> 0.6000, validation loss 1.0000 -> "
        "0.9000. Verdict: it helped. (the critic did not answer: an empty reply)"
    )
