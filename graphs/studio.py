"""Entry point for ``langgraph dev`` / LangGraph Studio (see ``langgraph.json``): the controller graph over a
demo trainer (digits, 5 epochs, one epoch trained), with the controller named by $MIMIC_CONTROLLER (default
``rules``).

    pip install -c constraints.txt -e ".[studio]"
    langgraph dev            # then open the Studio link it prints; graph "mimic_controller"

Each run is one decision. The input form (``StudioInput``) may stay empty: the decision is then made on the demo
trainer's current report, and applied to it. ``train_epochs`` trains that many more epochs first, so repeated
runs walk through a training run; ``report`` overrides fields of the report the controller sees (what-if).
The real loop (train an epoch, invoke, repeat) is ``mimic_learn.graphs.runner.AgentRunner``.

The server runs the graph on an event loop and ``langgraph dev`` refuses blocking calls there: the demo trainer
is built in a worker thread (``make_graph`` is a coroutine), and the graph's nodes are synchronous functions,
which LangGraph runs in its thread pool.
"""

# No `from __future__ import annotations`: LangGraph reads StudioState's annotations at run time, also when
# `langgraph dev` or a test loads this file by path under another module name.

import asyncio
import os
import threading
from typing import Annotated

from langgraph.channels import EphemeralValue
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

# Absolute imports: `langgraph dev` loads this file by path, not as part of the package.
from mimic_learn.agents.providers import load_chat_model
from mimic_learn.graphs.graph import AgentConfig, build_graph
from mimic_learn.graphs.runner import agent_report
from mimic_learn.tools.controls import TrainerControls
from mimic_learn.training import TrainConfig, Trainer

DEMO_EPOCHS = 5
MAX_TRAIN_EPOCHS = 20


class StudioInput(BaseModel):
    """One decision on the demo trainer. Every field is optional: an empty input decides on the trainer's
    current report."""

    train_epochs: int = Field(
        default=0,
        ge=0,
        le=MAX_TRAIN_EPOCHS,
        description="Train this many more epochs of the demo trainer before deciding (0: decide on its "
        "current report).",
    )
    epoch: int | None = Field(default=None, description="Override the epoch number the controller sees.")
    report: dict | None = Field(
        default=None,
        description="Override fields of the report the controller sees, e.g. "
        '{"val_acc": 0.3, "val_loss": 2.1}; missing fields come from the demo trainer.',
    )


class StudioOutput(TypedDict, total=False):
    epoch: int
    report: dict
    reflection: str
    decision: dict  # what `apply` committed: changes, kept reasons, every tool call with its reply
    messages: list


class StudioState(TypedDict, total=False):
    """The Studio graph's own channels. The inputs are ephemeral (they last one step), so a field left empty in
    a thread's next run is empty, not the previous run's value; the controller subgraph keeps its own state
    (memory, the previous decision) per thread."""

    train_epochs: Annotated[int, EphemeralValue(int)]
    epoch: Annotated[int, EphemeralValue(int)]
    report: Annotated[dict, EphemeralValue(dict)]
    reflection: str
    decision: dict
    messages: list  # the last decision's conversation (replaced, not appended, each run)


class DemoSession:
    """The demo trainer, its controls and the compiled controller graph (one per server process)."""

    def __init__(self, controller: str | None = None):
        self.trainer = Trainer.from_config(TrainConfig(task="digits", epochs=DEMO_EPOCHS))
        self.trainer.run_epoch()  # so there is a report to decide on and the inspect tools have data
        self.controls = TrainerControls(self.trainer)
        model = load_chat_model(controller or os.environ.get("MIMIC_CONTROLLER", "rules"))
        # checkpointer=True: the subgraph keeps its state (memory, previous decision) per thread, in the
        # checkpointer Studio supplies to the outer graph.
        self.controller = build_graph(self.controls, model, AgentConfig(), checkpointer=True)
        self.lock = threading.Lock()  # two Studio runs at once must not train the same model together
        self.compiled = self.compile()  # langgraph dev gives it its checkpointer

    def prepare(self, state: StudioState) -> dict:
        """Train the requested epochs, then hand the controller the epoch's report (with the overrides)."""
        with self.lock:
            for _ in range(state.get("train_epochs") or 0):
                self.trainer.run_epoch()
            last = self.trainer.history[-1]
            total = max(DEMO_EPOCHS, last.epoch + 1)  # the demo never reaches its "last" epoch
            report = agent_report(self.trainer, last, total) | dict(state.get("report") or {})
            epoch = int(state.get("epoch") or report.get("epoch") or last.epoch)
            report["epoch"] = epoch
        return {"epoch": epoch, "report": report}

    def compile(self, checkpointer=None):
        builder = StateGraph(StudioState, input_schema=StudioInput, output_schema=StudioOutput)
        builder.add_node("prepare", self.prepare)
        builder.add_node("controller", self.controller)
        builder.add_edge(START, "prepare")
        builder.add_edge("prepare", "controller")
        builder.add_edge("controller", END)
        return builder.compile(checkpointer=checkpointer, name="mimic_controller")


_session: DemoSession | None = None
_session_lock = threading.Lock()


def studio_graph(controller: str | None = None):
    """The Studio graph (built once per process): ``prepare`` -> the controller graph as a subgraph."""
    global _session
    with _session_lock:
        if _session is None:
            _session = DemoSession(controller)
        return _session.compiled


async def make_graph(config: dict | None = None):
    """``langgraph.json``'s factory: builds the demo trainer off the event loop."""
    return await asyncio.to_thread(studio_graph)
