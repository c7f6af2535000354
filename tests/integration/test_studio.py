"""LangGraph Studio as a user runs it: ``langgraph dev`` on 127.0.0.1 serving ``langgraph.json``'s graph, driven
by the LangGraph SDK (the client Studio itself uses). No network: the CLI's analytics are switched off and the
server needs nothing outside the machine (the Studio web page itself is loaded from smith.langchain.com by the
user's browser; it is not part of this test)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 90
RUN_TIMEOUT_S = 120


def _langgraph() -> str:
    exe = Path(sys.executable).with_name("langgraph")
    if not exe.is_file():
        message = "langgraph-cli is not installed (pip install -e '.[studio]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return str(exe)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path: Path):
    port = _free_port()
    env = os.environ | {
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGSMITH_TRACING": "false",
        "MIMIC_CONTROLLER": "rules",
    }
    log = (tmp_path / "langgraph.log").open("w")
    cmd = [_langgraph(), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, (
                f"langgraph dev exited:\n{(tmp_path / 'langgraph.log').read_text()[-3000:]}"
            )
            try:
                with urllib.request.urlopen(f"{url}/ok", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, "langgraph dev did not answer in time"
            time.sleep(0.5)
        yield url, tmp_path / "langgraph.log"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        log.close()


async def _drive(url: str) -> dict:
    from langgraph_sdk import get_client

    client = get_client(url=url)
    assistants = await client.assistants.search(graph_id="mimic_controller")
    assert assistants, "the graph from langgraph.json is not served"
    schemas = await client.assistants.get_schemas(assistants[0]["assistant_id"])
    thread = await client.threads.create()
    empty = await client.runs.wait(thread["thread_id"], "mimic_controller", input={})
    issue_input = {
        "epoch": 1,
        "report": {"epoch": 1, "train_loss": 2.0, "val_loss": 2.1, "val_acc": 0.3, "lr": 0.001},
    }
    what_if = await client.runs.wait(thread["thread_id"], "mimic_controller", input=issue_input)
    stepped = await client.runs.wait(thread["thread_id"], "mimic_controller", input={"train_epochs": 1})
    return {"schemas": schemas, "empty": empty, "what_if": what_if, "stepped": stepped}


@pytest.mark.slow
def test_langgraph_dev_serves_a_decision(server):
    url, log = server
    out = asyncio.run(asyncio.wait_for(_drive(url), RUN_TIMEOUT_S))
    fields = out["schemas"]["input_schema"]["properties"]
    assert {"train_epochs", "epoch", "report"} <= set(fields)  # the form Studio renders
    assert fields["train_epochs"]["default"] == 0
    for name in ("empty", "what_if", "stepped"):
        result = out[name]
        assert "__error__" not in result, f"{name}: {result.get('__error__')}\n{log.read_text()[-3000:]}"
        calls = result["decision"]["calls"]
        assert calls and all(c["tool"] and c["reply"] for c in calls), f"{name}: {result['decision']}"
    assert out["empty"]["epoch"] == 1  # the demo trainer's current report
    assert out["what_if"]["report"]["val_acc"] == 0.3 and out["what_if"]["report"]["total_epochs"] >= 2
    assert out["stepped"]["epoch"] == 2  # one more epoch trained, then decided
    assert "BlockingError" not in log.read_text()


def test_studio_graph_decides_on_an_empty_input_in_process():
    from langgraph.checkpoint.memory import InMemorySaver

    from mimic_learn.graphs.studio import DemoSession, StudioInput

    graph = DemoSession("rules").compile(checkpointer=InMemorySaver())  # as langgraph dev does
    assert set(graph.get_input_jsonschema()["properties"]) == set(StudioInput.model_fields)
    config = {"configurable": {"thread_id": "studio-test"}}
    first = graph.invoke({}, config)
    assert first["decision"]["calls"] and first["epoch"] == first["report"]["epoch"]
    assert "total_epochs" in first["report"] and first["reflection"] == "No previous decision to judge."
    second = graph.invoke(
        {"report": {"val_acc": 0.01}}, config
    )  # what-if: the same epoch, accuracy collapsed
    assert second["report"]["val_acc"] == 0.01 and second["epoch"] == first["epoch"]
    third = graph.invoke({}, config)  # the override does not stick to the thread
    assert third["report"]["val_acc"] == first["report"]["val_acc"]
    assert (
        third["reflection"] != "No previous decision to judge."
    )  # the subgraph's memory persists per thread
