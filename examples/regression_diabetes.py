"""Regression under MIMIC-Learn: scikit-learn's diabetes data (442 patients, 10 features, disease progression
after one year; bundled with scikit-learn, no download) and a small MLP in a plain PyTorch loop, steered through
``Steering`` with ``monitor="val_mse"`` (lower is better).

    python examples/regression_diabetes.py --controller rules          # or local, scripted:<file>, none
    python examples/regression_diabetes.py --controller none --no-track   # the baseline, nobody steers

Features and target are standardised on the training split, so ``val_mse`` is in units of the target's
variance (1.0: no better than predicting the mean). The controller may change the optimizer's lr and weight
decay and the model's dropout; the changes act on this loop's objects before the next epoch. Everything is
logged to MLflow like ``mimic-learn run``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch import nn

from mimic_learn.agents.providers import default_prompt
from mimic_learn.integrations import Steering


@dataclass
class Hyper:
    epochs: int = 30
    lr: float = 3e-3
    batch_size: int = 32
    hidden: int = 64
    dropout: float = 0.1
    val_size: int = 100
    seed: int = 0


def load(h: Hyper) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_val, y_val), standardised with the training split's mean and std."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(h.seed))
    val, tr = order[: h.val_size], order[h.val_size :]
    mx, sx, my, sy = x[tr].mean(0), x[tr].std(0), y[tr].mean(), y[tr].std()
    return (x[tr] - mx) / sx, (y[tr] - my) / sy, (x[val] - mx) / sx, (y[val] - my) / sy


def train(controller="rules", hyper: Hyper | None = None, **steering_options) -> dict:
    """Train, steered by ``controller`` (``"none"``: the baseline). Returns per-epoch validation MSE and the
    optimizer's final lr."""
    h = hyper or Hyper()
    x_tr, y_tr, x_val, y_val = load(h)
    torch.manual_seed(h.seed)
    model = nn.Sequential(
        nn.Linear(x_tr.shape[1], h.hidden), nn.ReLU(), nn.Dropout(h.dropout), nn.Linear(h.hidden, 1)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=h.lr)
    steering = Steering(
        model,
        optimizer,
        epochs=h.epochs,
        controller=controller,
        monitor="val_mse",
        mode="min",
        run_name=f"diabetes-{controller if isinstance(controller, str) else 'custom'}",
        experiment="mimic-regression-diabetes",
        **steering_options,
    )
    batches = torch.Generator().manual_seed(h.seed)
    with torch.no_grad():
        start_mse = nn.functional.mse_loss(model.eval()(x_val).squeeze(1), y_val).item()
    val_mse = []
    for _ in range(h.epochs):
        model.train()
        order = torch.randperm(len(x_tr), generator=batches)
        total = 0.0
        for i in range(0, len(order), h.batch_size):
            idx = order[i : i + h.batch_size]
            loss = nn.functional.mse_loss(model(x_tr[idx]).squeeze(1), y_tr[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            mse = nn.functional.mse_loss(model(x_val).squeeze(1), y_val).item()
        val_mse.append(mse)
        steering.epoch_end({"train_mse": total / len(x_tr), "val_mse": mse})
    steering.close()
    return {
        "start_mse": start_mse,
        "val_mse": val_mse,
        "lr": optimizer.param_groups[0]["lr"],
        "run_id": steering.run_id,
        "steering": steering,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--controller", default="rules", help="rules, local, scripted:<file>, none, ...")
    parser.add_argument("--epochs", type=int, default=Hyper.epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--instruction", default=None, help="your words for the controller")
    parser.add_argument("--reflection", default="log_only")
    parser.add_argument(
        "--prompt",
        default=None,
        help="prompt template (default: the controller's, compact for the embedded model)",
    )
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = train(
        args.controller,
        Hyper(epochs=args.epochs, seed=args.seed),
        instruction=args.instruction,
        reflection=args.reflection,
        prompt=args.prompt or default_prompt(args.controller),
        track=not args.no_track,
        tracking_uri=args.tracking_uri,
    )
    print(f"validation MSE before training {result['start_mse']:.3f} (standardised target)")
    for epoch, value in enumerate(result["val_mse"], 1):
        print(f"epoch {epoch:>3}  val_mse {value:.4f}")
    print(f"final lr {result['lr']:.3g}" + (f"; MLflow run {result['run_id']}" if result["run_id"] else ""))


if __name__ == "__main__":
    main()
