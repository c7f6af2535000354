"""The embedded local controller on the scenario bank, next to rules, random and always-keep.

    python benchmarks/local_controller.py [--prompt full] [--model-path X.gguf]

Runs every scenario of ``mimic_learn.agents.scenarios.bank()`` once per controller through the real graph
(tools, validation, budget 8, retries, rules fallback). valid = at least one tool call accepted and no fallback
(retries inside the budget allowed); first_try = every call of the first model turn accepted; sensible = the
committed change is one a practitioner accepts for that scenario. Latency is the controller's own time per
decision (decide_seconds). Last line: ``valid_rate <x> sensible_rate <y> median_s <z>`` for the local controller.
Targets: valid 1.00, median <= 2 s on 2 idle cores, >= 3 distinct tools used.
"""

from __future__ import annotations

import argparse
import os
import platform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompt", default="full")
    parser.add_argument("--model-path", default=None)
    args = parser.parse_args()

    from mimic_learn.agents.local import LocalChatModel
    from mimic_learn.agents.random_policy import RandomChatModel
    from mimic_learn.agents.rules import RulesChatModel
    from mimic_learn.agents.scenarios import bank, evaluate_controller
    from mimic_learn.agents.scripted import ScriptedChatModel

    scenarios = bank()
    keep = ScriptedChatModel(
        decisions=[], default_turns=[[{"name": "keep_current", "args": {"reason": "hold"}}]]
    )
    local = LocalChatModel(**({"model_path": args.model_path} if args.model_path else {}))
    controllers = [
        ("local", local),
        ("rules", RulesChatModel()),
        ("random", RandomChatModel(seed=0)),
        ("always-keep", keep),
    ]
    print(f"# local_controller: {len(scenarios)} scenarios, prompt '{args.prompt}', budget 8")
    print(
        f"# on: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; local model {local.resolved_model_path().name}, 1 thread"
    )
    reports = {}
    for name, model in controllers:
        reports[name] = r = evaluate_controller(model, name, scenarios, prompt=args.prompt)
        tools = ", ".join(f"{t} {n}" for t, n in r.tool_counts.most_common())
        print(
            f"{name:12s} valid {r.valid_rate:.2f}  first_try {r.first_try_rate:.2f}  sensible {r.sensible_rate:.2f}  "
            f"median_s {r.median_seconds:.3f}  distinct_tools {len(r.tool_counts)}  [{tools}]"
        )
    local_report = reports["local"]
    print(
        f"valid_rate {local_report.valid_rate:.2f} sensible_rate {local_report.sensible_rate:.2f} median_s {local_report.median_seconds:.3f}"
    )


if __name__ == "__main__":
    main()
