"""Does a trained adapter work end to end? Train SmolLM2-135M with LoRA on `rules` decisions, export the GGUF
adapter, serve it with llama.cpp through the real local controller, and compare with the base model.

    python benchmarks/train_controller_proof.py --out /tmp/proof --epochs 2

Data: evals/scenarios.py's 22 situations, each in 3 variants (evals.training_data.rules_situations: variant 0 is
the bank's own, 1-2 perturb losses, accuracies and lr); targets are the `rules` controller's calls. Train on
variants 0-1, hold out variant 2 (same kinds of situation, different numbers). Prints:
1. the time to train on this CPU;
2. on the held-out prompts, through LocalChatModel.bind_tools(...).invoke (constrained decoding, live bounds,
   the built-in model's short tool list; exactly what `--controller local[:adapter=...]` runs): how often the
   call equals the target (tool and every argument but the free-text reason), base vs adapter;
3. greedy free decoding (no grammar) of PyTorch+peft vs llama.cpp+GGUF adapter on a few held-out prompts,
   and the same pair for the base model: a check that the export (names, scale, q/k permutation) is right.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def same_call(call: dict, target: dict) -> bool:
    if call["name"] != target["tool"]:
        return False
    keys = [k for k in target["args"] if k != "reason"]
    return all(
        k in call["args"] and abs(float(call["args"][k]) - float(target["args"][k])) < 1e-9 for k in keys
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="/tmp/controller-proof")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--compare", type=int, default=4, help="held-out prompts for the peft vs llama.cpp check"
    )
    return parser.parse_args()


def write_data(out: Path) -> tuple[Path, list]:
    """Train on variants 0-1 (written to train.jsonl), hold out variant 2 (heldout.jsonl)."""
    from mimic_learn.evals.training_data import rules_situations

    out.mkdir(parents=True, exist_ok=True)
    situations = list(rules_situations(variants=3, seed=0))
    train = [ex for ex, _, _ in situations if ex["source"]["variant"] != 2]
    held = [(ex, msgs, tools) for ex, msgs, tools in situations if ex["source"]["variant"] == 2]
    data = out / "train.jsonl"
    data.write_text("".join(json.dumps(ex) + "\n" for ex in train))
    (out / "heldout.jsonl").write_text("".join(json.dumps(ex) + "\n" for ex, _, _ in held))
    print(f"{len(train)} train examples, {len(held)} held-out situations")
    return data, held


def train(data: Path, out: Path, args: argparse.Namespace) -> dict:
    """Train the adapter; the summary keeps the peft model and tokenizer for the greedy check."""
    from mimic_learn.agents.train_controller import TrainControllerConfig, train_controller

    cfg = TrainControllerConfig(epochs=args.epochs, lr=args.lr, rank=args.rank, threads=args.threads)
    summary = train_controller(
        data, out / "adapter", cfg, command=f"benchmarks/train_controller_proof.py --epochs {args.epochs}",
        keep_model=True,
    )  # fmt: skip
    print(
        f"TRAIN {summary['examples']} examples x {args.epochs} epochs = {summary['steps']} steps in "
        f"{summary['train_seconds']:.0f} s ({summary['train_seconds'] / summary['steps']:.1f} s/step, "
        f"{args.threads} torch threads; base load {summary['load_seconds']:.0f} s); adapter "
        f"{summary['adapter_bytes'] / 1e6:.1f} MB"
    )
    return summary


def heldout_calls(held: list, out: Path, threads: int) -> dict:
    """Base and adapter through LocalChatModel on the held-out situations: (hits, valid, median s, calls)."""
    from mimic_learn.agents.local import LocalChatModel

    rows = {}
    for label, model in (
        ("base", LocalChatModel(n_threads=threads, adapter_path="none")),
        ("adapter", LocalChatModel(n_threads=threads, adapter_path=out / "adapter")),
    ):
        hits, tool_hits, valid, seconds, calls = 0, 0, 0, [], []
        for ex, msgs, tools in held:
            started = time.perf_counter()
            ai = model.bind_tools(tools).invoke(msgs)
            seconds.append(time.perf_counter() - started)
            valid += bool(ai.tool_calls)
            hit = bool(ai.tool_calls) and same_call(ai.tool_calls[0], ex["target"][0])
            hits += hit
            tool_hits += bool(ai.tool_calls) and ai.tool_calls[0]["name"] == ex["target"][0]["tool"]
            calls.append((ex["source"]["scenario"], ex["target"][0], ai.tool_calls[:1], hit))
        rows[label] = (hits, valid, sorted(seconds)[len(seconds) // 2], calls)
        print(
            f"HELDOUT {label}: target call {hits}/{len(held)}, right tool {tool_hits}/{len(held)}, "
            f"valid {valid}/{len(held)}, median {rows[label][2]:.2f} s"
        )
    return rows


def print_calls(rows: dict) -> None:
    for (scenario, target, base_call, _), (_, _, ad_call, hit) in zip(
        rows["base"][3], rows["adapter"][3], strict=True
    ):

        def fmt(c: list) -> str:
            args = {k: v for k, v in c[0]["args"].items() if k != "reason"} if c else {}
            return f"{c[0]['name']} {json.dumps(args)}" if c else "none"

        t = f"{target['tool']} {json.dumps({k: v for k, v in target['args'].items() if k != 'reason'})}"
        print(
            f"  {scenario:28s} target {t:38s} base {fmt(base_call):38s} adapter {fmt(ad_call)} {'ok' if hit else 'MISS'}"
        )


def greedy_agreement(held: list, out: Path, summary: dict, args: argparse.Namespace) -> dict:
    """Greedy free decoding, PyTorch+peft vs llama.cpp+GGUF adapter (and both bases), on a few held-out prompts."""
    from mimic_learn.agents.local_runtime import find_smollm2_gguf, load_model
    from mimic_learn.agents.train_controller import greedy_text

    peft_model, tokenizer = summary["model"], summary["tokenizer"]
    agree = {"base": 0, "adapter": 0}
    for ex, _, _ in held[: args.compare]:
        messages = ex["messages"]
        for label, adapter in (("base", None), ("adapter", out / "adapter" / "adapter.gguf")):
            loaded = load_model(find_smollm2_gguf(), args.threads, 4096, adapter)
            served = loaded.server.handle_chat_completions(
                {"messages": messages, "max_tokens": 48, "temperature": 0.0, "cache_prompt": False}
            )["choices"][0]["message"]["content"]
            if label == "base":
                with peft_model.disable_adapter():
                    torch_text = greedy_text(peft_model, tokenizer, messages, 48)
            else:
                torch_text = greedy_text(peft_model, tokenizer, messages, 48)
            same = served.strip() == torch_text.strip()
            agree[label] += same
            print(
                f"  GREEDY {label:7s} {'SAME' if same else 'DIFF'}\n    llama.cpp: {served!r}\n    torch:     {torch_text!r}"
            )
    return agree


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    data, held = write_data(out)
    summary = train(data, out, args)
    rows = heldout_calls(held, out, args.threads)
    print_calls(rows)
    agree = greedy_agreement(held, out, summary, args)
    n = min(args.compare, len(held))
    print(f"GREEDY agreement torch vs llama.cpp: base {agree['base']}/{n}, adapter {agree['adapter']}/{n}")
    print(
        f"RESULT heldout_target_base {rows['base'][0]}/{len(held)} heldout_target_adapter {rows['adapter'][0]}/{len(held)} "
        f"train_s {summary['train_seconds']:.0f} greedy_agree_adapter {agree['adapter']}/{n}"
    )


if __name__ == "__main__":
    main()
