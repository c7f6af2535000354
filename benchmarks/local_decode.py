"""Decision latency and valid-call rate of the embedded offline controller (agents/local.py).

    python benchmarks/local_decode.py [-n 10] [--threads 1] [--model-path X.gguf] [--no-baseline]

N decisions on one fixed prompt (the repository's system prompt + the "paper" template on a fixed overfitting
report), all 10 built-in tools bound, seeds 0..N-1, at the controller's default settings (1 thread, temperature
0.2, grammar-constrained JSON). A call is valid when its tool is bound and its args pass that tool's pydantic
args schema (range checks that live in the tool's code are not counted). Latency is wall time per
``invoke``; the one-off cold build of the system prompt's KV cache is reported apart and not in the median.
Baseline: the same model and prompt decoding freely (no grammar), counted valid when the text contains a JSON
object ``{"tool": ..., "args": {...}}`` that passes the same check.

Last line: ``valid_rate <x> median_s <y>``.

Last run (`python benchmarks/local_decode.py`, 2-vCPU Xeon shared with other jobs, load average 2.8, SmolLM2-135M
Q4_1, xllamacpp 2026.10): constrained 10/10 valid, median 1.55 s per decision (18 output tokens, 1258 input
tokens), load + cold cache 10.3 s once; baseline free text 0/10 valid, median 8.25 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time

from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.utils.function_calling import convert_to_openai_tool

from mimic_learn.agents.local import LocalChatModel, describe_tools
from mimic_learn.prompts.templates import render, system_prompt
from mimic_learn.tools import as_langchain_tools

REPORT = {
    "epoch": 4,
    "total_epochs": 10,
    "train_acc": 0.962,
    "val_acc": 0.861,
    "lr": 0.01,
    "dropout": 0.1,
    "weight_decay": 0.0,
    "alpha": 0.0,
    "previous_decision": "set_lr 0.02 -> 0.01 (validation loss rose)",
}


def is_valid(call: dict, schemas: dict) -> bool:
    if call.get("name") not in schemas or not isinstance(call.get("args"), dict):
        return False
    try:
        schemas[call["name"]].model_validate(call["args"])
    except Exception:
        return False
    return True


def free_text_call(text: str) -> dict | None:
    """The first ``{"tool": ..., "args": ...}`` object in free text, if any (baseline only)."""
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = json.JSONDecoder().raw_decode(text[match.start() :])
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "tool" in obj:
            return {"name": obj.get("tool"), "args": obj.get("args")}
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model-path", default=None)
    parser.add_argument("--no-baseline", action="store_true")
    opts = parser.parse_args()

    tools = as_langchain_tools(None)  # schemas only: no trainer behind them, nothing is executed
    schemas = {t.name: t.args_schema for t in tools}
    messages = [SystemMessage(system_prompt(4)), HumanMessage(render("paper", REPORT))]
    model = LocalChatModel(model_path=opts.model_path, n_threads=opts.threads)
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at start; model {model._identifying_params['model_path']}"
    )

    bound = model.bind_tools(tools)
    started = time.perf_counter()
    bound.invoke(messages, seed=10_000)  # loads the model and builds the system prompt's KV cache
    cold_s = time.perf_counter() - started
    latencies, valid, tokens_out = [], 0, []
    for seed in range(opts.n):
        started = time.perf_counter()
        ai = bound.invoke(messages, seed=seed)
        latencies.append(time.perf_counter() - started)
        ok = bool(ai.tool_calls) and all(is_valid(c, schemas) for c in ai.tool_calls)
        valid += ok
        tokens_out.append(ai.usage_metadata["output_tokens"])
        call = ai.tool_calls[0] if ai.tool_calls else ai.invalid_tool_calls
        print(f"  seed {seed}: {latencies[-1]:.2f}s valid={ok} {json.dumps(call, default=str)[:150]}")
    rate, median = valid / opts.n, statistics.median(latencies)
    print(
        f"constrained: {valid}/{opts.n} valid, median {median:.2f}s per decision "
        f"(median {statistics.median(tokens_out):.0f} output tokens, {ai.usage_metadata['input_tokens']} input "
        f"tokens); model load + cold KV cache of the system prompt {cold_s:.1f}s once"
    )

    if not opts.no_baseline:
        free_valid, free_lat = 0, []
        tool_text = describe_tools([convert_to_openai_tool(t) for t in tools], max_calls=1)
        free_prompt = [SystemMessage(messages[0].content + "\n\n" + tool_text), messages[1]]
        for seed in range(opts.n):
            started = time.perf_counter()
            ai = model.invoke(free_prompt, seed=seed)  # no tools bound: no grammar, same text the model sees
            free_lat.append(time.perf_counter() - started)
            call = free_text_call(str(ai.content))
            free_valid += bool(call and is_valid(call, schemas))
        free_rate = free_valid / opts.n
        ratio = f"{rate / free_rate:.1f}x" if free_rate else "inf (baseline 0)"
        print(
            f"baseline (free text, same model and prompt): {free_valid}/{opts.n} valid, median "
            f"{statistics.median(free_lat):.2f}s; valid-rate ratio constrained/baseline {ratio}"
        )
    print(f"valid_rate {rate:.2f} median_s {median:.3f}")


if __name__ == "__main__":
    main()
