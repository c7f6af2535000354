"""Bank tasks whose epochs are a user's own loop, steered through ``LoopTrainer`` (what ``Steering`` wraps).

    trainer = DiabetesLoop(TrainConfig(task="external", lr=3e-3, dropout=0.1, epochs=30, seed=0))
    report = trainer.run_epoch()        # one epoch of a plain PyTorch loop, closed by end_epoch(metrics)

``DiabetesLoop`` is ``examples/regression_diabetes.py``'s regression (scikit-learn's diabetes data, a small MLP,
Adam, ``monitor="val_mse"``, lower is better) as a ``LoopTrainer``: the loop is the example's, the knobs act on
its optimizer and model through the same control surface ``Steering`` gives a controller. The one addition is a
``TrainerRng``: the loop draws its batch order from ``rng.data`` and runs under ``rng.active()``, so a
checkpoint carries the random state and the bank can roll every candidate out over re-seeded data orders, as it
does for our own ``Trainer``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..training.checkpoints import TrainerRng
from ..training.config import TrainConfig
from ..training.loop import LoopTrainer
from ..training.reports import EpochReport

DIABETES_VAL = 100  # patients held out for val_mse (of 442)


def diabetes_split(seed: int) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_val, y_val), standardised with the training split's mean and std (the target too:
    val_mse 1.0 is no better than predicting the mean)."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, train = order[:DIABETES_VAL], order[DIABETES_VAL:]
    mx, sx, my, sy = x[train].mean(0), x[train].std(0), y[train].mean(), y[train].std()
    return (x[train] - mx) / sx, (y[train] - my) / sy, (x[val] - mx) / sx, (y[val] - my) / sy


class DiabetesLoop(LoopTrainer):
    """The diabetes regression loop; ``config`` gives lr, dropout, batch size, weight decay and seed."""

    def __init__(self, config: TrainConfig):
        torch.manual_seed(config.seed)
        self.x_train, self.y_train, self.x_val, self.y_val = diabetes_split(config.seed)
        model = nn.Sequential(
            nn.Linear(self.x_train.shape[1], 64),
            nn.ReLU(),
            nn.Dropout(config.dropout or 0.0),
            nn.Linear(64, 1),
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        super().__init__(
            model, optimizer, monitor="val_mse", mode="min", seed=config.seed,
            rng=TrainerRng(config.seed, torch.device("cpu")),
        )  # fmt: skip
        self.config = config  # the bank reads the run's settings back from here
        self.batch_size = config.batch_size

    def run_epoch(self) -> EpochReport:
        """One epoch of the loop, closed with ``end_epoch`` (the pause point)."""
        self.model.train()
        total = 0.0
        with self.rng.active():
            order = torch.randperm(len(self.x_train), generator=self.rng.data)
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                loss = nn.functional.mse_loss(self.model(self.x_train[idx]).squeeze(1), self.y_train[idx])
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                total += loss.item() * len(idx)
        self.model.eval()
        with torch.no_grad():
            val_mse = nn.functional.mse_loss(self.model(self.x_val).squeeze(1), self.y_val).item()
        train_mse = total / len(self.x_train)
        return self.end_epoch({"train_loss": train_mse, "val_loss": val_mse, "val_mse": val_mse})


LOOP_TASKS = {"diabetes": DiabetesLoop}
