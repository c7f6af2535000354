"""The embedded local controller on the scenario bank, next to rules, random and always-keep.

    python benchmarks/local_controller.py [--prompt compact|full|...] [--tool-list auto|short|full] [--diagnose]
                                          [--max-string-chars N] [--threads N] [--model-path X.gguf] [--verbose]

Defaults are the local controller's own (prompt compact, short tool list, no diagnosis, 1 thread).

Runs every scenario of ``mimic_learn.agents.scenarios.bank()`` once per controller through the real graph
(tools, validation, budget 8, retries, rules fallback). valid = at least one tool call accepted and no fallback
(retries inside the budget allowed); first_try = every call of the first model turn accepted; sensible = the
committed change is one a practitioner accepts for that scenario. Latency is the controller's own time per
decision (decide_seconds). For the local model it also prints where the time went (median tokens and
milliseconds of prompt evaluation and of decoding per decision, from llama.cpp's timings; the one-off priming
of the system prompt's KV cache is part of the first decision) and, with ``--diagnose``, which situations it
named. Last line: ``valid_rate <x> sensible_rate <y> median_s <z> distinct_tools <n>`` for the local controller.
Targets: valid 1.00, median <= 2 s on 2 idle cores, >= 3 distinct tools used.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from collections import Counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompt", default=None, help="default: the local model's (compact for SmolLM2)")
    parser.add_argument("--model-path", default=None)
    parser.add_argument("--diagnose", action="store_true", help="local: name the situation before the call")
    parser.add_argument(
        "--tool-list",
        choices=["auto", "short", "full"],
        default="auto",
        help="local: one sentence per tool in the system prompt (short), the full descriptions, or the model's "
        "default (auto: short for the built-in SmolLM2)",
    )
    parser.add_argument("--max-string-chars", type=int, default=None, help="local: cap on string arguments")
    parser.add_argument("--threads", type=int, default=1, help="local: llama.cpp CPU threads")
    parser.add_argument("--verbose", action="store_true", help="one line per scenario for the local model")
    args = parser.parse_args()

    from mimic_learn.agents.local import LocalChatModel
    from mimic_learn.agents.providers import default_prompt
    from mimic_learn.agents.random_policy import RandomChatModel
    from mimic_learn.agents.rules import RulesChatModel
    from mimic_learn.agents.scenarios import bank, evaluate_controller
    from mimic_learn.agents.scripted import ScriptedChatModel

    decodes: list[dict] = []  # response_metadata of every decoded local decision

    class RecordingLocalChatModel(LocalChatModel):
        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            result = super()._generate(messages, stop, run_manager, **kwargs)
            metadata = result.generations[0].message.response_metadata
            if metadata.get("decoded"):
                decodes.append(metadata)
            return result

    short = {"auto": None, "short": True, "full": False}[args.tool_list]
    options = {"diagnose": args.diagnose, "short_tools": short, "n_threads": args.threads}
    if args.model_path:
        options["model_path"] = args.model_path
    if args.max_string_chars:
        options["max_string_chars"] = args.max_string_chars
    local = RecordingLocalChatModel(**options)
    args.prompt = args.prompt or default_prompt("local", args.model_path)

    scenarios = bank()
    keep = ScriptedChatModel(
        decisions=[], default_turns=[[{"name": "keep_current", "args": {"reason": "hold"}}]]
    )
    controllers = [
        ("local", local),
        ("rules", RulesChatModel()),
        ("random", RandomChatModel(seed=0)),
        ("always-keep", keep),
    ]
    variant = (
        f"{'short' if local._short_tools else 'full'} tool list, diagnose {'on' if args.diagnose else 'off'}, "
        f"max_string_chars {local.max_string_chars}"
    )
    print(
        f"# local_controller: {len(scenarios)} scenarios, prompt '{args.prompt}', budget 8, local options: "
        f"{variant}"
    )
    print(
        f"# on: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; local model {local.resolved_model_path().name}, {args.threads} thread(s)"
    )

    def progress(s, r):
        if args.verbose and decodes:
            m = decodes[-1]
            print(
                f"#   {s.name:26s} {'sensible' if r.sensible else 'not     '} {r.seconds:5.2f}s "
                f"{m.get('situation') or '':12s} {', '.join(r.tools) or '-'} -> {', '.join(r.moves) or 'no change'}"
            )

    reports = {}
    for name, model in controllers:
        reports[name] = r = evaluate_controller(
            model, name, scenarios, prompt=args.prompt, progress=progress if name == "local" else None
        )
        tools = ", ".join(f"{t} {n}" for t, n in r.tool_counts.most_common())
        print(
            f"{name:12s} valid {r.valid_rate:.2f}  first_try {r.first_try_rate:.2f}  sensible {r.sensible_rate:.2f}  "
            f"median_s {r.median_seconds:.3f}  distinct_tools {len(r.tool_counts)}  [{tools}]"
        )
    if decodes:
        timings = [m.get("timings") or {} for m in decodes]

        def med(key: str) -> float:
            return statistics.median(t.get(key, 0.0) for t in timings)

        print(
            f"# local time per decoded decision (median of {len(decodes)}): prompt {med('prompt_n'):.0f} tokens "
            f"evaluated in {med('prompt_ms'):.0f} ms, {med('predicted_n'):.0f} tokens decoded in "
            f"{med('predicted_ms'):.0f} ms; system prompt primed once in {decodes[0].get('prime_s', 0):.1f} s "
            f"(first decision); load average now {os.getloadavg()[0]:.1f}"
        )
        situations = Counter(m["situation"] for m in decodes if m.get("situation"))
        if situations:
            print("# local situations named: " + ", ".join(f"{k} {n}" for k, n in situations.most_common()))
    local_report = reports["local"]
    print(
        f"valid_rate {local_report.valid_rate:.2f} sensible_rate {local_report.sensible_rate:.2f} "
        f"median_s {local_report.median_seconds:.3f} distinct_tools {len(local_report.tool_counts)}"
    )


if __name__ == "__main__":
    main()
