"""Datasets and data regimes.

Every task yields three disjoint splits: train (the regime's subset), validation (held out from the
original *train* split, never from test) and test (only ever reported, never used for decisions).

    digits     sklearn ``load_digits()`` (offline, 8x8), the default and the test-suite task
    mnist      torchvision MNIST (``--data-dir`` points at a folder holding ``MNIST/raw``)
    cifar10    torchvision CIFAR-10
    synthetic  CIFAR-shaped random tensors with a learnable signal, for testing CIFAR code paths
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from .config import parse_rare_class, parse_regime

DEFAULT_VAL_SIZE = {"digits": 300, "mnist": 5000, "mnist32": 5000, "cifar10": 5000, "synthetic": 200}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass
class TensorData:
    """A split held in memory: inputs ``x`` (N, ...) float32 and labels ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} rows but y has {len(self.y)}")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray | torch.Tensor) -> TensorData:
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.x.device)
        return TensorData(self.x[idx], self.y[idx])

    def to(self, device: torch.device | str) -> TensorData:
        return TensorData(self.x.to(device), self.y.to(device))


@dataclass
class TaskData:
    train: TensorData
    val: TensorData
    test: TensorData
    num_classes: int
    train_indices: np.ndarray | None = None  # indices into the original train split, for audits and tests
    val_indices: np.ndarray | None = None
    source: str = "user-supplied tensors"

    def to(self, device: torch.device | str) -> TaskData:
        """The same splits with their tensors on ``device`` (index arrays and labels of the split stay)."""
        return replace(self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device))


class DataUnavailableError(RuntimeError):
    """The dataset's files are not there and downloading was not allowed."""


def _load_digits() -> tuple[TensorData, TensorData]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    # A fixed test split (seed 0) so every run, arm and seed is scored on the same 360 images.
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=360, stratify=digits.target, random_state=0
    )
    return TensorData(x[idx_train], y[idx_train]), TensorData(x[idx_test], y[idx_test])


def _torchvision_dataset(name: str, data_dir: str, download: bool):
    import torchvision

    cls = {"mnist": torchvision.datasets.MNIST, "cifar10": torchvision.datasets.CIFAR10}[name]
    try:
        return cls(root=data_dir, train=True, download=download), cls(
            root=data_dir, train=False, download=download
        )
    except RuntimeError as exc:
        where = Path(data_dir).resolve()
        layout = "MNIST/raw/*-ubyte" if name == "mnist" else "cifar-10-batches-py/"
        raise DataUnavailableError(
            f"{name} not found under {where} (expected {layout}). Point --data-dir at the folder that "
            f"holds it, or pass --download on a machine with internet access. ({exc})"
        ) from exc


def _load_mnist(data_dir: str, download: bool, size: int = 28, channels: int = 1):
    train, test = _torchvision_dataset("mnist", data_dir, download)

    def convert(ds) -> TensorData:
        x = ds.data.unsqueeze(1).float().div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD)
        if size != 28:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        if channels != 1:
            x = x.expand(-1, channels, -1, -1).contiguous()
        return TensorData(x, ds.targets.clone().long())

    return convert(train), convert(test)


def _load_cifar10(data_dir: str, download: bool):
    train, test = _torchvision_dataset("cifar10", data_dir, download)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)

    def convert(ds) -> TensorData:
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float().div_(255.0)
        return TensorData((x - mean) / std, torch.tensor(ds.targets, dtype=torch.long))

    return convert(train), convert(test)


def make_synthetic(
    n_train: int = 1000, n_test: int = 200, shape=(3, 32, 32), classes: int = 10, seed: int = 0
):
    """CIFAR-shaped tensors whose class shifts the mean of one channel patch: learnable, tiny, offline."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(classes, *shape, generator=g) * 0.5

    def draw(n: int) -> TensorData:
        y = torch.arange(n) % classes
        y = y[torch.randperm(n, generator=g)]
        x = prototypes[y] + torch.randn(n, *shape, generator=g)
        return TensorData(x, y)

    return draw(n_train), draw(n_test)


def regime_size(regime: str | int | float, available: int) -> int:
    regime = parse_regime(regime)
    if regime == "full":
        return available
    if isinstance(regime, float):
        return max(1, int(round(regime * available)))
    if regime < 1:
        raise ValueError(f"regime={regime} must be >= 1 sample")
    if regime > available:
        raise ValueError(
            f"regime={regime} asks for more training images than the {available} left after the validation split"
        )
    return int(regime)


def _stratified_take(indices: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` of ``indices`` drawn stratified by label (plain random when n < number of classes)."""
    if n >= len(indices):
        return np.sort(indices)
    classes = np.unique(labels[indices])
    stratify = labels[indices] if n >= len(classes) else None
    taken, _ = train_test_split(indices, train_size=n, stratify=stratify, random_state=seed)
    return np.sort(taken)


def thin_class(indices: np.ndarray, labels: np.ndarray, k: int, fraction: float) -> np.ndarray:
    """``indices`` with class ``k`` cut to ``ceil(fraction * its count)`` images (at least 1), the first ones in
    index order (the regime's subset is already a seeded random draw); the other classes untouched."""
    of_k = indices[labels[indices] == k]
    if len(of_k) == 0:
        present = ", ".join(str(c) for c in np.unique(labels[indices]))
        raise ValueError(
            f"rare_class: class {k} has no training image in this subset; its classes are {present}"
        )
    keep = of_k[: max(1, math.ceil(fraction * len(of_k)))]
    return np.sort(np.concatenate([indices[labels[indices] != k], keep]))


def split_train_val(
    labels: np.ndarray, val_size: int, regime: str | int | float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified validation split held out from the train split, then the regime's subset of the rest."""
    labels = np.asarray(labels)
    all_idx = np.arange(len(labels))
    if not 0 < val_size < len(labels):
        raise ValueError(f"val_size={val_size} must lie in (0, {len(labels)})")
    rest, val = train_test_split(all_idx, test_size=val_size, stratify=labels, random_state=seed)
    n = regime_size(regime, len(rest))
    train = _stratified_take(rest, labels, n, seed)
    return train, np.sort(val)


def load_task(
    task: str,
    regime: str | int | float = "full",
    val_size: int | None = None,
    seed: int = 0,
    data_dir: str = "data",
    download: bool = False,
    rare_class: str | None = None,
) -> TaskData:
    if task == "digits":
        full_train, test = _load_digits()
        source = "sklearn load_digits()"
    elif task == "mnist":
        full_train, test = _load_mnist(data_dir, download)
        source = f"torchvision MNIST at {Path(data_dir).resolve()}"
    elif task == "mnist32":
        full_train, test = _load_mnist(data_dir, download, size=32, channels=3)
        source = f"torchvision MNIST resized to 3x32x32 at {Path(data_dir).resolve()}"
    elif task == "cifar10":
        full_train, test = _load_cifar10(data_dir, download)
        source = f"torchvision CIFAR-10 at {Path(data_dir).resolve()}"
    elif task == "synthetic":
        full_train, test = make_synthetic(seed=0)
        source = "synthetic CIFAR-shaped tensors"
    else:
        raise ValueError(f"unknown task {task!r}: use digits, mnist, cifar10 or synthetic")
    val_size = val_size if val_size is not None else DEFAULT_VAL_SIZE.get(task, 5000)
    train_idx, val_idx = split_train_val(full_train.y.numpy(), val_size, regime, seed)
    if rare_class is not None:
        train_idx = thin_class(train_idx, full_train.y.numpy(), *parse_rare_class(rare_class))
    return TaskData(
        train=full_train.subset(train_idx),
        val=full_train.subset(val_idx),
        test=test,
        num_classes=int(full_train.y.max().item()) + 1,
        train_indices=train_idx,
        val_indices=val_idx,
        source=source,
    )


def iterate_batches(data: TensorData, batch_size: int, generator: torch.Generator | None = None):
    """Yield (x, y) batches; shuffled with ``generator`` when one is given."""
    n = len(data)
    # The order is drawn on the generator's device (the CPU) whatever device holds the data, so a run's
    # batches are the same with the data on the CPU or on a GPU.
    order = torch.randperm(n, generator=generator) if generator is not None else None
    if order is not None and data.x.device != order.device:
        order = order.to(data.x.device)
    for start in range(0, n, batch_size):
        if order is None:
            yield data.x[start : start + batch_size], data.y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            yield data.x[idx], data.y[idx]


def augment_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, on a batch tensor (standard CIFAR augmentation)."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    # Offsets and flips are drawn on the generator's device (CPU) and moved to the batch's device.
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    # Crop rows, then columns, with per-image offsets.
    out = torch.gather(
        padded, 2, (dy.view(n, 1, 1, 1) + rows.view(1, 1, h, 1)).expand(n, x.shape[1], h, w + 2 * pad)
    )
    out = torch.gather(out, 3, (dx.view(n, 1, 1, 1) + cols.view(1, 1, 1, w)).expand(n, x.shape[1], h, w))
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    out[flip] = out[flip].flip(-1)
    return out
