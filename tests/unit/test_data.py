"""Data regimes, splits, MNIST loading and CIFAR-style augmentation (training/data.py, training/config.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mimic_learn.training import TrainConfig, Trainer, load_task, parse_regime
from mimic_learn.training.data import (
    MNIST_MEAN,
    MNIST_STD,
    _load_digits,
    augment_crop_flip,
    iterate_batches,
    regime_size,
    split_train_val,
)

# Digits: 1797 images, 360 held out as test, 300 as validation -> 1137 left for the regimes.
DIGITS_REST = 1797 - 360 - 300


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x.reshape(len(x), -1)}


def _balanced_mnist_like_labels(per_class: int = 6000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.permutation(np.repeat(np.arange(10), per_class))


# ---------------------------------------------------------------------------------------------- regimes
@pytest.mark.parametrize(
    "regime, expected",
    [
        ("full", 55000),
        (6000, 6000),
        ("6000", 6000),
        (600, 600),
        (100, 100),
        (10, 10),
        (0.1, 5500),
        ("0.5", 27500),
    ],
)
def test_regime_sizes_on_an_mnist_sized_split(regime, expected):
    labels = _balanced_mnist_like_labels()
    train, val = split_train_val(labels, val_size=5000, regime=regime, seed=0)
    assert len(train) == expected
    assert len(val) == 5000
    assert len(np.unique(train)) == len(train)


@pytest.mark.parametrize(
    "regime, expected", [("full", DIGITS_REST), (600, 600), (100, 100), (10, 10), (0.1, 114)]
)
def test_regime_sizes_on_digits(regime, expected):
    data = load_task("digits", regime, seed=0)
    assert len(data.train) == expected
    assert len(data.val) == 300
    assert len(data.test) == 360
    assert data.num_classes == 10


@pytest.mark.parametrize("regime, per_class", [(10, 1), (100, 10), (600, 60), (6000, 600)])
def test_regimes_are_stratified(regime, per_class):
    labels = _balanced_mnist_like_labels()
    train, _ = split_train_val(labels, val_size=5000, regime=regime, seed=3)
    assert np.bincount(labels[train], minlength=10).tolist() == [per_class] * 10


@pytest.mark.parametrize("regime, per_class", [(10, 1), (100, 10)])
@pytest.mark.parametrize("seed", [0, 3])
def test_digits_small_regimes_are_stratified(regime, per_class, seed):
    digits = load_task("digits", regime, seed=seed)
    assert torch.bincount(digits.train.y, minlength=10).tolist() == [per_class] * 10


def test_validation_is_stratified_and_held_out_from_the_train_split():
    labels = _balanced_mnist_like_labels()
    train, val = split_train_val(labels, val_size=5000, regime="full", seed=0)
    assert set(train).isdisjoint(val)
    assert len(train) + len(val) == len(labels)  # 'full' is everything not held out for validation
    assert np.bincount(labels[val], minlength=10).tolist() == [500] * 10


@pytest.mark.parametrize("regime", ["full", 100, 10])
def test_train_val_test_are_disjoint(regime):
    data = load_task("digits", regime, seed=1)
    assert set(data.train_indices.tolist()).isdisjoint(data.val_indices.tolist())
    # sklearn's digits has no duplicate images, so equal rows would mean the same image in two splits.
    train, val, test = _rows(data.train.x), _rows(data.val.x), _rows(data.test.x)
    assert train.isdisjoint(val)
    assert train.isdisjoint(test)
    assert val.isdisjoint(test)


def test_test_split_is_the_same_for_every_seed_and_regime():
    a = load_task("digits", 100, seed=0)
    b = load_task("digits", "full", seed=7)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.test.y, b.test.y)


def test_same_seed_same_subset_different_seed_different_subset():
    a = load_task("digits", 100, seed=5)
    b = load_task("digits", 100, seed=5)
    c = load_task("digits", 100, seed=6)
    assert np.array_equal(a.train_indices, b.train_indices)
    assert np.array_equal(a.val_indices, b.val_indices)
    assert torch.equal(a.train.x, b.train.x)
    assert not np.array_equal(a.train_indices, c.train_indices)
    assert not np.array_equal(a.val_indices, c.val_indices)


def test_split_rows_are_the_rows_their_indices_name():
    full_train, _ = _load_digits()
    data = load_task("digits", 20, seed=0)
    assert (np.diff(data.train_indices) > 0).all()  # sorted, unique
    assert torch.equal(data.train.x, full_train.x[data.train_indices])
    assert torch.equal(data.train.y, full_train.y[data.train_indices])
    assert torch.equal(data.val.x, full_train.x[data.val_indices])


@pytest.mark.parametrize(
    "regime, expected",
    [("full", "full"), ("600", 600), (" 10 ", 10), ("0.25", 0.25), (100, 100), (600.0, 600)],
)
def test_parse_regime(regime, expected):
    parsed = parse_regime(regime)
    assert parsed == expected
    assert type(parsed) is type(expected)


@pytest.mark.parametrize("regime", ["lots", "1.5", "-0.2", "0", 0.0, 1.5, -3.0, True, float("nan")])
def test_parse_regime_rejects_nonsense(regime):
    with pytest.raises(ValueError, match="regime"):
        parse_regime(regime)


def test_regime_larger_than_the_split_is_an_error():
    with pytest.raises(ValueError, match=r"regime=2000 .* 1137"):
        load_task("digits", 2000)
    with pytest.raises(ValueError, match="regime=0"):
        regime_size(0, 100)


def test_iterate_batches_covers_every_row_once_in_a_seeded_order():
    data = load_task("digits", 100, seed=0).train
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    ys1 = torch.cat([y for _, y in iterate_batches(data, 32, g1)])
    ys2 = torch.cat([y for _, y in iterate_batches(data, 32, g2)])
    assert torch.equal(ys1, ys2)
    assert sorted(ys1.tolist()) == sorted(data.y.tolist())
    assert not torch.equal(ys1, data.y)  # shuffled
    sizes = [len(y) for _, y in iterate_batches(data, 32)]
    assert sizes == [32, 32, 32, 4]


# ---------------------------------------------------------------------------------------------- MNIST
def test_mnist_regime_6000_sizes_and_normalisation(mnist_dir):
    data = load_task("mnist", 6000, seed=0, data_dir=str(mnist_dir))
    assert data.train.x.shape == (6000, 1, 28, 28)
    assert data.val.x.shape == (5000, 1, 28, 28)
    assert data.test.x.shape == (10000, 1, 28, 28)
    assert data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.int64
    assert data.num_classes == 10
    assert set(data.train_indices.tolist()).isdisjoint(data.val_indices.tolist())
    # Normalised with MNIST's raw-pixel statistics: background pixels map to -mean/std, ink to (1-mean)/std,
    # and the (stratified) subset has mean ~0 and std ~1.
    x = data.train.x
    assert x.min().item() == pytest.approx(-MNIST_MEAN / MNIST_STD, abs=1e-5)
    assert x.max().item() == pytest.approx((1 - MNIST_MEAN) / MNIST_STD, abs=1e-5)
    assert x.mean().item() == pytest.approx(0.0, abs=0.02)
    assert x.std().item() == pytest.approx(1.0, abs=0.02)
    raw = x * MNIST_STD + MNIST_MEAN
    assert raw.mean().item() == pytest.approx(0.1307, abs=0.005)
    assert raw.std().item() == pytest.approx(0.3081, abs=0.005)
    counts = torch.bincount(data.train.y, minlength=10)
    assert counts.min().item() >= 500 and counts.max().item() <= 700  # stratified: MNIST's own class mix


def test_mnist_missing_data_says_where_to_look(tmp_path):
    from mimic_learn.training import DataUnavailableError

    with pytest.raises(DataUnavailableError, match="data-dir"):
        load_task("mnist", 100, data_dir=str(tmp_path))


# ---------------------------------------------------------------------------------------------- CIFAR-shaped
def test_synthetic_cifar_task_trains_one_tiny_epoch_with_resnet18():
    cfg = TrainConfig(
        task="synthetic", regime=64, val_size=32, batch_size=32, eval_batch_size=64, augment=True
    )
    trainer = Trainer.from_config(cfg)
    assert type(trainer.model).__name__ == "ResNet"
    assert trainer.data.train.x.shape == (64, 3, 32, 32)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    report = trainer.run_epoch()
    assert report.steps == 2
    assert report.finite
    assert len(report.per_class_val_acc) == 10
    assert report.dropout is None
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])]
    assert "conv1.weight" in changed and "fc.weight" in changed


def _all_crops(x: torch.Tensor, pad: int) -> list[torch.Tensor]:
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    crops = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            crops += [crop, crop.flip(-1)]
    return crops


def test_augment_crop_flip_is_a_real_crop_and_flip():
    n = 64
    x = (
        torch.arange(n * 3 * 32 * 32, dtype=torch.float32).reshape(n, 3, 32, 32) + 1.0
    )  # all distinct, non-zero
    out = augment_crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    identity = flipped = shifted = 0
    for i in range(n):
        matches = [c for c in _all_crops(x[i], 4) if torch.equal(c, out[i])]
        assert len(matches) == 1, f"image {i} is not a padded crop (optionally flipped) of its input"
        identity += torch.equal(out[i], x[i])
        flipped += torch.equal(out[i], x[i].flip(-1))
        shifted += bool((out[i] == 0).any())  # zero padding came into view
    assert identity < n and shifted > n // 2 and flipped < n
    # Flips happen: some output's columns run right-to-left (values decrease along the last axis).
    decreasing = sum(bool((out[i, 0, 10, 10:20].diff() < 0).all()) for i in range(n))
    assert 0 < decreasing < n
    # Same generator seed, same augmentation; the input is left untouched.
    again = augment_crop_flip(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert torch.equal(x, torch.arange(n * 3 * 32 * 32, dtype=torch.float32).reshape(n, 3, 32, 32) + 1.0)


def test_a_rare_class_keeps_its_fraction_of_training_images_and_nothing_else_changes():
    full = load_task("digits", seed=1)
    rare = load_task("digits", seed=1, rare_class="3:0.05")
    counts = lambda y: np.bincount(y.numpy(), minlength=10)  # noqa: E731
    before, after = counts(full.train.y), counts(rare.train.y)
    assert after[3] == int(np.ceil(0.05 * before[3])) and after[3] < before[3]
    assert np.array_equal(np.delete(after, 3), np.delete(before, 3))  # the other classes untouched
    assert _rows(rare.train.x) <= _rows(full.train.x)  # a subset of the same draw
    assert torch.equal(rare.val.y, full.val.y) and torch.equal(rare.test.y, full.test.y)  # still balanced
    trainer = Trainer.from_config(TrainConfig(task="digits", epochs=1, seed=1, rare_class="3:0.05"))
    assert np.array_equal(counts(trainer.data.train.y), after)  # a run's config reaches the data


@pytest.mark.parametrize("text", ["3", "x:0.1", "3:0", "3:1.5", "-1:0.5"])
def test_rare_class_rejects_what_it_cannot_read(text):
    with pytest.raises(ValueError, match=r"rare_class=.*<class index>:<fraction kept in \(0, 1\]>"):
        TrainConfig(task="digits", rare_class=text)
