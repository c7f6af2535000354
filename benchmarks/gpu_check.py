"""The Trainer on a GPU: do its control paths work there, and what does it cost against a plain loop?

    python benchmarks/gpu_check.py [--device auto|cuda|cpu] [--n-train 45000] [--repeats 3]

Needs only torch and torchvision (the training layer knows nothing of LLMs), so it runs on a bare GPU machine
with the repository on PYTHONPATH as ``mimic_learn``. Data: CIFAR-shaped synthetic tensors (no CIFAR-10 copy
is needed); model and optimizer: the blog's ResNet-18 set-up (SGD momentum 0.9, weight decay 1e-3, lr 0.1,
StepLR(5, 0.1), batch 128, crop+flip augmentation).

Part 1, checks (each prints ``ok`` or ``FAIL`` with what differed; the exit status is 1 if any failed):
the model and the data live on the device; batch order is the same with the data on the CPU or the device;
a rollback to a boundary checkpoint followed by the same epoch reproduces the weights bitwise (cuDNN in
deterministic mode); the per-step blend with a tensor delta and with a gradient-function delta runs on the
device and moves the weights; a checkpoint saved to disk, loaded on the CPU and restored continues on the
device; knob changes reach the optimizer; a user's own loop steered through ``LoopTrainer`` measures gradient
norms, blends, takes a new lr and restores on the device.

Part 2, throughput: one epoch = train on ``--n-train`` images + evaluate 5,000. Interleaved repeats of a plain
hand-written loop (data and model on the device), the same loop steered through ``LoopTrainer``'s optimizer
hooks (what the Lightning/HF/plain-loop integrations add), the Trainer with its data on the device (the default on CUDA)
and the Trainer with its data on the CPU (batches copied each step; ``data_on_device=False``). Medians; the
``ratio`` lines are Trainer images/s over plain images/s. The last line estimates the blog's 20 epochs on
CIFAR-10 (45,000 train + 5,000 val) at the measured Trainer speed.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mimic_learn.training import TrainConfig, Trainer
from mimic_learn.training.data import TaskData, TensorData, iterate_batches, make_synthetic
from mimic_learn.training.loop import LoopTrainer
from mimic_learn.training.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainer_throughput import PlainLoop  # noqa: E402

FAILURES: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}{(': ' + detail) if detail else ''}")
    if not ok:
        FAILURES.append(name)


def synthetic_task(n_train: int, n_val: int = 5000, n_test: int = 1000) -> TaskData:
    train_val, test = make_synthetic(n_train=n_train + n_val, n_test=n_test, seed=0)
    train = TensorData(train_val.x[:n_train], train_val.y[:n_train])
    val = TensorData(train_val.x[n_train:], train_val.y[n_train:])
    return TaskData(train, val, test, num_classes=10, source=f"synthetic CIFAR-shaped, {n_train} train")


def blog_cfg(device: str, **overrides) -> TrainConfig:
    base = dict(
        task="synthetic", epochs=20, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3,
        schedule="step", step_size=5, gamma=0.1, batch_size=128, seed=0, augment=True,
        model="resnet18_cifar", device=device,
    )  # fmt: skip
    base.update(overrides)
    return TrainConfig(**base)


def make_trainer(data: TaskData, cfg: TrainConfig) -> Trainer:
    torch.manual_seed(cfg.seed)
    return Trainer(build_model(cfg.model, data.num_classes, cfg.dropout), data, cfg)


def weights(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(a, b, strict=True))


def check_placement(trainer: Trainer, data: TaskData) -> None:
    """The model and the data on the device; the same batch order with the data on the CPU or the device."""
    dev = trainer.device
    params_on = {p.device.type for p in trainer.model.parameters()}
    check("model on the device", params_on == {dev.type}, f"parameters on {params_on}, trainer device {dev}")
    check(
        "data on the device",
        trainer.data.train.x.device.type == dev.type and trainer.data.val.y.device.type == dev.type,
        f"train.x on {trainer.data.train.x.device}",
    )

    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    ys_cpu = torch.cat([y for _, y in iterate_batches(data.train, 128, gen_a)])
    ys_dev = torch.cat([y.cpu() for _, y in iterate_batches(data.train.to(dev), 128, gen_b)])
    check("same batch order with the data on the CPU or the device", torch.equal(ys_cpu, ys_dev))


def check_rollback(trainer: Trainer) -> None:
    # Rollback then the same epoch again: bitwise the same weights when cuDNN is deterministic.
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    ckpt = trainer.checkpoint()
    trainer.run_epoch()
    first = weights(trainer)
    trainer.restore(ckpt)
    trainer.run_epoch()
    diff = max_diff(first, weights(trainer))
    check("rollback + replay reproduces the epoch (deterministic cuDNN)", diff == 0.0, f"max |Δw| {diff:.3g}")
    torch.backends.cudnn.deterministic = False


def check_blend(trainer: Trainer) -> str:
    """Returns the classifier's weight name (the user-loop check blends it too)."""
    # The per-step blend: a tensor delta on the classifier and a gradient-function delta on the first conv.
    names = [n for n, _ in trainer.model.named_parameters()]
    fc, conv = names[-2], names[0]
    before = weights(trainer)
    trainer.set_alpha(0.3)
    delta = torch.full_like(dict(trainer.model.named_parameters())[fc], 1e-3)
    trainer.set_delta({fc: delta, conv: lambda grad, param: -0.01 * grad})
    report = trainer.run_epoch()
    moved = max_diff(before, weights(trainer))
    check(
        "per-step blend with tensor and gradient-function deltas",
        report.finite and report.delta_layers == sorted([fc, conv]) and moved > 0,
        f"delta layers {report.delta_layers}, max |Δw| {moved:.3g}",
    )
    trainer.set_alpha(0.0)
    return fc


def check_disk_round_trip(trainer: Trainer) -> None:
    dev = trainer.device
    # Disk round trip: save, load on the CPU, restore into the device trainer, go on.
    with tempfile.TemporaryDirectory() as tmp:
        path = trainer.save_checkpoint(Path(tmp) / "epoch.pt")
        saved = weights(trainer)
        trainer.run_epoch()
        loaded = Trainer.load_checkpoint(path)
        trainer.restore(loaded)
        diff = max_diff(saved, weights(trainer))
        state_dev = {
            t.device.type for s in trainer.optimizer.state.values() for t in s.values() if torch.is_tensor(t)
        }
        report = trainer.run_epoch()
        check(
            "checkpoint saved, loaded on the CPU, restored on the device",
            diff == 0.0 and state_dev <= {dev.type} and report.finite,
            f"max |Δw| {diff:.3g}, optimizer state on {state_dev}",
        )


def check_knobs(trainer: Trainer) -> None:
    trainer.set_lr(0.05)
    trainer.set_weight_decay(5e-4)
    groups = trainer.optimizer.param_groups
    report = trainer.run_epoch()
    check(
        "knob changes reach the optimizer",
        all(g["lr"] == 0.05 or abs(g["lr"] - 0.005) < 1e-12 for g in groups)
        and all(g["weight_decay"] == 5e-4 for g in groups)
        and report.finite,
        f"lr {groups[0]['lr']:g} after the epoch (StepLR may have stepped), weight decay {groups[0]['weight_decay']:g}",
    )


def check_user_loop(data: TaskData, cfg: TrainConfig, dev: torch.device, fc: str) -> None:
    # A user's own loop steered through LoopTrainer's optimizer hooks (what the integrations use).
    loop_data = data.to(dev)
    torch.manual_seed(0)
    own = PlainLoop(build_model(cfg.model, data.num_classes, None).to(dev), loop_data, cfg)
    steer = LoopTrainer(own.model, own.opt, monitor="val_acc", mode="max")
    own.run_epoch()
    report = steer.end_epoch({"val_acc": 0.5})
    norms_ok = bool(report.grad_norms) and all(v > 0 for v in report.grad_norms.values())
    good = steer.checkpoint()
    steer.set_alpha(0.3)
    steer.set_delta({fc: torch.full_like(dict(own.model.named_parameters())[fc], 1e-3)})
    steer.set_lr(0.01)
    own.run_epoch()
    report = steer.end_epoch({"val_acc": 0.4})
    lr_after = own.opt.param_groups[0]["lr"]
    moved = max_diff([t for k, t in good["model"].items() if k in steer._named_params], weights(steer))
    steer.restore_weights(good)
    back = max_diff([t for k, t in good["model"].items() if k in steer._named_params], weights(steer))
    steer.detach()
    check(
        "a user's loop on the device: hooks measure grad norms, blend, set_lr, restore",
        norms_ok and report.delta_layers == [fc] and lr_after == 0.01 and moved > 0 and back == 0.0,
        f"{len(report.grad_norms)} grad norms > 0: {norms_ok}, delta layers {report.delta_layers}, "
        f"lr {lr_after:g}, max |Δw| {moved:.3g} then {back:.3g} after restore",
    )


def checks(device: str, n_train: int) -> None:
    data = synthetic_task(n_train, n_val=256, n_test=64)
    cfg = blog_cfg(device)
    trainer = make_trainer(data, cfg)
    check_placement(trainer, data)
    report = trainer.run_epoch()
    check("an epoch runs", report.finite, f"train loss {report.train_loss:.4f}, val acc {report.val_acc:.3f}")
    check_rollback(trainer)
    fc = check_blend(trainer)
    check_disk_round_trip(trainer)
    check_knobs(trainer)
    check_user_loop(data, cfg, trainer.device, fc)


def throughput(device: str, n_train: int, repeats: int) -> None:
    data = synthetic_task(n_train)
    trainer_dev = make_trainer(data, blog_cfg(device))
    trainer_cpu = make_trainer(data, blog_cfg(device, data_on_device=False))
    plain_data = data.to(trainer_dev.device)
    plain = PlainLoop(copy.deepcopy(trainer_dev.model), plain_data, blog_cfg(device))
    hooked = PlainLoop(copy.deepcopy(trainer_dev.model), plain_data, blog_cfg(device))
    steer = LoopTrainer(hooked.model, hooked.opt, monitor="val_acc", mode="max")

    def hooked_epoch():
        hooked.run_epoch()
        steer.end_epoch({"val_acc": 0.0})

    sides = {
        "plain": plain.run_epoch,
        "plain + LoopTrainer hooks": hooked_epoch,
        "trainer (data on device)": trainer_dev.run_epoch,
        "trainer (data on CPU)": trainer_cpu.run_epoch,
    }
    sync = torch.cuda.synchronize if trainer_dev.device.type == "cuda" else (lambda: None)
    for run in sides.values():  # warm-up: cuDNN autotuning, allocator
        run()
    sync()
    times: dict[str, list[float]] = {k: [] for k in sides}
    for repeat in range(1, repeats + 1):
        row = []
        for name, run in sides.items():
            start = time.perf_counter()
            run()
            sync()
            times[name].append(time.perf_counter() - start)
            row.append(f"{name} {n_train / times[name][-1]:8.0f} img/s")
        print(f"repeat {repeat}: " + " | ".join(row))
    ips = {k: n_train / statistics.median(v) for k, v in times.items()}
    print("median images/s: " + ", ".join(f"{k} {v:.0f}" for k, v in ips.items()))
    print(f"ratio trainer (data on device) / plain {ips['trainer (data on device)'] / ips['plain']:.3f}")
    print(f"ratio trainer (data on CPU) / plain {ips['trainer (data on CPU)'] / ips['plain']:.3f}")
    print(f"ratio plain + LoopTrainer hooks / plain {ips['plain + LoopTrainer hooks'] / ips['plain']:.3f}")
    per_epoch = statistics.median(times["trainer (data on device)"]) * 45000 / n_train
    print(
        f"estimate: blog on CIFAR-10 (20 epochs of 45,000 train + 5,000 val images): "
        f"about {20 * per_epoch / 60:.1f} min per arm at the Trainer's measured speed"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one), cuda or cpu")
    parser.add_argument("--n-train", type=int, default=45000, help="training images per throughput epoch")
    parser.add_argument("--check-n-train", type=int, default=2048, help="training images in the checks")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved epochs per side")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if cuda else (platform.processor() or platform.machine())
    print(f"# gpu_check: Trainer on {'CUDA' if cuda else 'CPU'} ({name}), torch {torch.__version__}")
    print(f"# command: python benchmarks/gpu_check.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    checks(args.device, args.check_n_train)
    if not args.skip_throughput:
        throughput(args.device, args.n_train, args.repeats)
    print(f"checks failed: {len(FAILURES)}{(' (' + ', '.join(FAILURES) + ')') if FAILURES else ''}")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    raise SystemExit(main())
