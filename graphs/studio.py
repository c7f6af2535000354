"""Entry point for ``langgraph dev`` / LangGraph Studio (see langgraph.json): the controller graph over a
digits trainer, with the controller named by $MIMIC_CONTROLLER (default ``rules``).

Studio drives one decision per invocation; send ``{"epoch": 1, "report": ...}`` or use ``make_graph`` from
Python. The real loop (train an epoch, invoke, repeat) is ``mimic_learn.graphs.runner.AgentRunner``.
"""

from __future__ import annotations

import os

from mimic_learn.agents.providers import load_chat_model
from mimic_learn.graphs.graph import AgentConfig, build_graph
from mimic_learn.tools.controls import TrainerControls
from mimic_learn.training import TrainConfig, Trainer


def make_graph(config: dict | None = None):
    trainer = Trainer.from_config(TrainConfig(task="digits", epochs=5))
    trainer.run_epoch()  # so the inspect tools have something to show
    controls = TrainerControls(trainer)
    model = load_chat_model(os.environ.get("MIMIC_CONTROLLER", "rules"))
    return build_graph(controls, model, AgentConfig())  # Studio supplies its own checkpointer
