"""The embedded local controller on the outcome bank's test split, next to rules, keep and the best constant.

    python benchmarks/local_controller.py [--split test] [--bank FILE] [--prompt compact|full|...]
                                          [--tool-list auto|short|full] [--diagnose] [--threads N]
                                          [--model-path X.gguf] [--verbose]

Defaults are the local controller's own (prompt compact, short tool list, no diagnosis, 1 thread).

Every situation of the bank's split (``mimic_learn.evals``: real trainer states replayed from seeds + configs,
every candidate action rolled out over 3 data orders) is shown to each controller through the real graph (tools,
validation, budget 8, retries, rules fallback); the committed decision is scored by its measured outcome at the
longest stored horizon: normalised regret (0 = the best candidate, 1 = the worst), win rate vs keep (paired
difference over data orders beyond 2 standard errors), valid-call rate (no valid call = keep, counted invalid).
Latency is the controller's own time per decision (decide_seconds). The test split is reported, never tuned on.

Prints the anchors (oracle, keep, random, every constant policy, rules) and the local controller, and for the local
model where its time went (llama.cpp timings). Last line, for the local controller:
``valid_rate <x> regret <y> win_rate <z> median_s <w>``. Latency target: median <= 2 s, 1 thread, idle machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="test", choices=["train", "dev", "test"])
    parser.add_argument(
        "--bank", default=None, help="bank file (default: the shipped evals/data/bank_v2.jsonl.gz)"
    )
    parser.add_argument("--prompt", default=None, help="default: the local model's (compact for SmolLM2)")
    parser.add_argument("--model-path", default=None)
    parser.add_argument(
        "--adapter",
        default=None,
        help="local: a LoRA adapter (folder, adapter.gguf or a shipped name, e.g. smollm2-bank-v1); none: the bare model "
        "(default: the built-in model's default adapter, smollm2-bank-v2)",
    )
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
    parser.add_argument("--verbose", action="store_true", help="one line per situation for the local model")
    return parser.parse_args()


def recording_local_model(args: argparse.Namespace, decodes: list[dict]):
    """The local controller as configured by ``args``, appending every decoded decision's metadata to ``decodes``."""
    from mimic_learn.agents.local import LocalChatModel

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
    if args.adapter:
        options["adapter_path"] = args.adapter
    if args.max_string_chars:
        options["max_string_chars"] = args.max_string_chars
    return RecordingLocalChatModel(**options)


def row(name: str, s) -> str:
    lo, hi = s.interval("regret")
    return (
        f"{name:22s} regret {s.mean('regret'):.3f} [{lo:.2f}, {hi:.2f}]  win {s.mean('win'):.2f}  "
        f"harm {s.mean('harm'):.2f}  valid {s.mean('valid'):.2f}  median_s {s.median_seconds:.3f}  "
        f"tokens {s.mean_tokens:.0f}"
    )


def print_scores(anchors: list, local_score, verbose: bool) -> None:
    from mimic_learn.evals.score import ANCHORS, best_constant, paired_regret_gap

    scores = {s.controller: s for s in [*anchors, local_score]}
    best = best_constant(anchors)
    for name in ANCHORS:
        print(row(name, scores[name]))
    print(row(f"best constant ({best.controller})", best))
    print(row("local", local_score))
    for other in ("rules", best.controller):
        gap, (lo, hi) = paired_regret_gap(local_score, scores[other])
        print(f"# local vs {other}: regret lower by {gap:.3f} [{lo:.3f}, {hi:.3f}] (95% paired bootstrap)")
    if verbose:
        for r in local_score.results:
            print(f"#   {r.situation:28s} {r.chosen:14s} regret {r.regret:6.3f} {r.seconds:5.2f}s {r.calls}")


def print_decode_time(decodes: list[dict]) -> None:
    timings = [m.get("timings") or {} for m in decodes]

    def med(key: str) -> float:
        return statistics.median(t.get(key, 0.0) for t in timings)

    print(
        f"# local time per decoded decision (median of {len(decodes)}): prompt {med('prompt_n'):.0f} tokens "
        f"evaluated in {med('prompt_ms'):.0f} ms, {med('predicted_n'):.0f} tokens decoded in "
        f"{med('predicted_ms'):.0f} ms; load average now {os.getloadavg()[0]:.1f}"
    )


def main() -> None:
    args = parse_args()
    from mimic_learn.agents.providers import default_prompt
    from mimic_learn.evals.bank import load_bank
    from mimic_learn.evals.score import ANCHORS, Evaluator

    decodes: list[dict] = []  # response_metadata of every decoded local decision
    local = recording_local_model(args, decodes)
    spec = f"local:adapter={args.adapter}" if args.adapter else "local"
    prompt = args.prompt or default_prompt(spec, args.model_path)

    entries = load_bank(args.bank, args.split)
    tasks = sorted({e.situation.task for e in entries})
    print(
        f"# local_controller: outcome bank split '{args.split}', {len(entries)} situations ({', '.join(tasks)}), "
        f"horizon = longest stored, 3 data orders; local prompt '{prompt}', others 'full'; budget 8"
    )
    print(
        f"# on: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; local model "
        f"{local.describe()}, "
        f"{args.threads} thread(s)"
    )
    anchors = Evaluator(entries).run(list(ANCHORS))
    local_score = Evaluator(entries, prompt=prompt).run(["local"], models={"local": local})[0]
    print_scores(anchors, local_score, args.verbose)
    if decodes:
        print_decode_time(decodes)
    print(
        f"valid_rate {local_score.mean('valid'):.2f} regret {local_score.mean('regret'):.3f} "
        f"win_rate {local_score.mean('win'):.2f} median_s {local_score.median_seconds:.3f}"
    )


if __name__ == "__main__":
    main()
