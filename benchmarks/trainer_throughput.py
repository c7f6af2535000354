"""Trainer throughput against a plain hand-written PyTorch loop: what does the pausable Trainer cost?

    python benchmarks/trainer_throughput.py [--task mnist|digits] [--repeats 5] [--threads 2]

Both sides train the same model from the same initial weights on the same batches (same seed, same
``torch.Generator`` order), with the same optimizer (Adam, lr 1e-3, batch 64) and the same thread count, in one
process. The Trainer is built the way the CLI builds it (``Trainer.from_config``; per-layer gradient norms,
per-class validation metrics and boundary checkpoints are always on). The plain loop does what any training
script does: forward, loss, backward, step, running loss/accuracy, then a validation pass.

The machine is noisy, so repeats are interleaved (trainer epoch, plain epoch, trainer epoch, ...) and medians are
compared. One epoch = train on the train split + evaluate the validation split; images/s counts training images
per second of that epoch. The last line is ``ratio <trainer images/s / plain images/s>``; the target is >= 0.95.
On full MNIST (PaperCNN) when the data is there, else sklearn digits (DigitsNet), and the header says which.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mimic_learn.training import TrainConfig, Trainer
from mimic_learn.training.data import TaskData, augment_crop_flip

REPO = Path(__file__).resolve().parents[1]


def find_mnist() -> Path | None:
    """The folder holding MNIST/raw: $MIMIC_MNIST_DIR, else <repo>/../shared/data."""
    for candidate in (os.environ.get("MIMIC_MNIST_DIR"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
            return Path(candidate)
    return None


class PlainLoop:
    """The baseline: a textbook PyTorch epoch, holding its own model, optimizer and batch-order generator.

    It runs where its model's parameters are and indexes batches where the data is (the GPU check puts both
    on the GPU); Adam or SGD as the config says, with the same crop+flip augmentation when ``cfg.augment``.
    """

    def __init__(self, model: torch.nn.Module, data: TaskData, cfg: TrainConfig):
        self.model, self.data, self.cfg = model, data, cfg
        self.device = next(model.parameters()).device
        if cfg.optimizer == "sgd":
            self.opt = torch.optim.SGD(
                model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
            )
        else:
            self.opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(
            cfg.seed
        )  # dropout draws from the global RNG, as the Trainer's do from its own copy

    def run_epoch(self) -> tuple[float, float, float]:
        model, train, bs = self.model, self.data.train, self.cfg.batch_size
        model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        order = torch.randperm(len(train), generator=self.gen).to(train.x.device)
        for start in range(0, len(train), bs):
            idx = order[start : start + bs]
            x, y = train.x[idx].to(self.device), train.y[idx].to(self.device)
            if self.cfg.augment:
                x = augment_crop_flip(x, self.gen)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
        model.eval()
        val_loss = torch.zeros((), device=self.device)
        val_correct = torch.zeros((), dtype=torch.long, device=self.device)
        with torch.no_grad():
            val, ebs = self.data.val, self.cfg.eval_batch_size
            for start in range(0, len(val), ebs):
                x = val.x[start : start + ebs].to(self.device)
                y = val.y[start : start + ebs].to(self.device)
                logits = model(x)
                val_loss += F.cross_entropy(logits, y, reduction="sum")
                val_correct += (logits.argmax(1) == y).sum()
        return (loss_sum / len(train)).item(), correct.item() / len(train), val_correct.item() / len(val)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("mnist", "digits"), default="mnist")
    parser.add_argument("--repeats", type=int, default=5, help="epochs per side, interleaved")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    task, note = args.task, ""
    data_dir = find_mnist()
    if task == "mnist" and data_dir is None:
        task, note = "digits", " (MNIST not found: set MIMIC_MNIST_DIR; fell back to digits)"
    cfg = TrainConfig(
        task=task,
        regime="full",
        epochs=args.repeats,
        batch_size=64,
        optimizer="adam",
        lr=1e-3,
        seed=0,
        data_dir=str(data_dir or "data"),
        num_threads=args.threads,
        device="cpu",
    )
    trainer = Trainer.from_config(cfg)
    plain = PlainLoop(copy.deepcopy(trainer.model), trainer.data, cfg)
    model_name = type(trainer.model).__name__
    n_train, n_val = len(trainer.data.train), len(trainer.data.val)

    print(f"# trainer_throughput: Trainer.run_epoch vs a plain PyTorch loop, {model_name} on {task}{note}")
    print(
        f"# on: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, python {platform.python_version()}"
    )
    print(
        f"# baseline: hand-written loop, same model/init/batches/optimizer (adam lr 1e-3, batch {cfg.batch_size}); "
        f"epoch = {n_train} train + {n_val} val images; {args.repeats} interleaved repeats, medians"
    )
    print(
        f"# command: python benchmarks/trainer_throughput.py {' '.join(sys.argv[1:] if argv is None else argv)}"
    )

    times = {"trainer": [], "plain": []}
    cpu = {"trainer": [], "plain": []}  # process CPU seconds: less sensitive to other jobs on the machine
    for repeat in range(1, args.repeats + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        report = trainer.run_epoch()
        times["trainer"].append(time.perf_counter() - start)
        cpu["trainer"].append(time.process_time() - start_cpu)
        start, start_cpu = time.perf_counter(), time.process_time()
        _, _, val_acc = plain.run_epoch()
        times["plain"].append(time.perf_counter() - start)
        cpu["plain"].append(time.process_time() - start_cpu)
        print(
            f"repeat {repeat}: trainer {n_train / times['trainer'][-1]:8.0f} img/s"
            f" ({cpu['trainer'][-1]:6.1f} cpu s, val acc {report.val_acc:.4f})"
            f"   plain {n_train / times['plain'][-1]:8.0f} img/s"
            f" ({cpu['plain'][-1]:6.1f} cpu s, val acc {val_acc:.4f})"
        )

    same = all(
        torch.equal(a, b) for a, b in zip(trainer.model.parameters(), plain.model.parameters(), strict=True)
    )
    print(
        f"# same computation: final weights {'bitwise identical' if same else 'DIFFER'} after {args.repeats} epochs"
    )
    trainer_ips = n_train / statistics.median(times["trainer"])
    plain_ips = n_train / statistics.median(times["plain"])
    print(f"median images/s: trainer {trainer_ips:.0f}, plain {plain_ips:.0f}")
    cpu_ratio = statistics.median(cpu["plain"]) / statistics.median(cpu["trainer"])
    print(
        f"median cpu s/epoch: trainer {statistics.median(cpu['trainer']):.1f}, plain {statistics.median(cpu['plain']):.1f}"
        f" (cpu ratio {cpu_ratio:.3f})"
    )
    print(f"ratio {trainer_ips / plain_ips:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
