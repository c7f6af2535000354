"""Which file the built-in controller runs from: the shipped SmolLM2 Q4_1 GGUF or its derived Q4_0 copy.

    python benchmarks/runtime_base.py [--rounds 3] [--requests 12] [--threads 1]

Both files are loaded into this process with the default adapter (smollm2-bank-v2) and the system prompt's KV
cache primed, as ``--controller local`` runs them. The same requests (the adapter's shipped training prompts:
real rendered reports from the outcome bank's train split, 24 output tokens, temperature 0) then go to both, one
after the other, the order alternating, for ``--rounds`` rounds. Reported: the median wall time per request on
each side, the median paired difference, and how many replies were identical. The decision it informs:
agents/local_runtime.py runs the built-in model from the Q4_0 copy when that is faster and the replies agree.

Last run (2026-12-03, 2-vCPU AMD EPYC, idle apart from this, 1 thread, 3 rounds x 12 requests):
``q4_1 2.426 s, q4_0 1.466 s, paired difference 0.841 s, ratio 0.60, identical replies 36/36``. The decision
quality check is benchmarks/local_controller.py (bank v2 dev: the same regret, 0.182, on both files).
Last line: ``ratio <q4_0/q4_1 median> identical <k>/<n>``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from mimic_learn.agents.local import DEFAULT_ADAPTER, SHIPPED_ADAPTERS
from mimic_learn.agents.local_runtime import find_smollm2_gguf, load_model, smollm2_runtime_gguf
from mimic_learn.agents.models import models_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    folder = SHIPPED_ADAPTERS / DEFAULT_ADAPTER
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()][: args.requests]
    runtime = smollm2_runtime_gguf(models_dir())
    if runtime == find_smollm2_gguf():
        sys.exit("the Q4_0 copy could not be made (see the warning above); nothing to compare")
    files = {"q4_1": find_smollm2_gguf(), "q4_0": runtime}
    servers = {}
    for name, path in files.items():
        loaded = load_model(path, args.threads, 4096, folder / "adapter.gguf")
        loaded.server.handle_chat_completions(
            {"messages": rows[0]["messages"][:1], "max_tokens": 1, "temperature": 0.0, "cache_prompt": True}
        )
        servers[name] = loaded.server
    print(
        f"# {len(rows)} requests x {args.rounds} rounds, {args.threads} thread(s), load {os.getloadavg()[0]:.1f}"
    )

    seconds: dict[str, list[float]] = {name: [] for name in files}
    identical = total = 0
    for round_ in range(args.rounds):
        for index, row in enumerate(rows):
            order = list(files) if (round_ + index) % 2 == 0 else list(reversed(files))
            replies = {}
            for name in order:
                request = {
                    "messages": row["messages"][:2],
                    "max_tokens": 24,
                    "temperature": 0.0,
                    "cache_prompt": True,
                }
                started = time.perf_counter()
                response = servers[name].handle_chat_completions(request)
                seconds[name].append(time.perf_counter() - started)
                replies[name] = response["choices"][0]["message"].get("content")
            identical += replies["q4_1"] == replies["q4_0"]
            total += 1
    paired = statistics.median(a - b for a, b in zip(seconds["q4_1"], seconds["q4_0"], strict=True))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    print(
        f"q4_1 {medians['q4_1']:.3f} s, q4_0 {medians['q4_0']:.3f} s, paired difference {paired:.3f} s; "
        f"load now {os.getloadavg()[0]:.1f}"
    )
    print(f"ratio {medians['q4_0'] / medians['q4_1']:.2f} identical {identical}/{total}")


if __name__ == "__main__":
    main()
