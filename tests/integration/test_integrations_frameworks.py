"""The PyTorch Lightning callback and the Hugging Face TrainerCallback on tiny models built here (no downloads):
a scripted ``set_lr`` reaches the framework's optimizer, metrics and traces land in MLflow, ``every_n_steps``
decides within epochs, failures end the run as FAILED. The README examples are the functions between the
markers (pasted in README.md; tests/test_readme_examples.py keeps the two the same)."""

# The frameworks are imported after the skip-or-fail check, and each README example carries its own imports
# so that it can be copied alone:
# ruff: noqa: E402, F811

from __future__ import annotations

import importlib
import os

import mlflow
import pytest


def _require(package: str):
    """Skip without the optional framework locally; in CI (``CI=true``) it must be installed."""
    if os.environ.get("CI", "").lower() == "true":
        return importlib.import_module(package)  # ImportError: CI installs the `dev` extra, which has it
    return pytest.importorskip(
        package, reason=f"pip install 'mimic-learn[{'hf' if package == 'transformers' else package}]'"
    )


_require("lightning")
_require("transformers")

# --- README example start: lightning ---
# A LightningModule you already have; it logs `train_loss` and `val_loss`, the callback decides after each epoch.
import lightning.pytorch as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mimic_learn.integrations.lightning import MimicCallback


class Regressor(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 1))

    def training_step(self, batch, batch_idx):
        loss = nn.functional.mse_loss(self.net(batch[0]).squeeze(1), batch[1])
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", nn.functional.mse_loss(self.net(batch[0]).squeeze(1), batch[1]))

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05)
        return [optimizer], [torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.9**epoch)]


def train_lightning(controller="rules", epochs=3, monitor="val_loss", **callback_options):
    torch.manual_seed(0)
    x = torch.randn(512, 8)
    y = x @ torch.linspace(-1, 1, 8) + 0.1 * torch.randn(512)
    train = DataLoader(TensorDataset(x[:384], y[:384]), batch_size=32)
    val = DataLoader(TensorDataset(x[384:], y[384:]), batch_size=128)
    callback = MimicCallback(controller=controller, monitor=monitor, mode="min", **callback_options)
    module = Regressor()
    trainer = L.Trainer(max_epochs=epochs, callbacks=[callback], logger=False, enable_progress_bar=False)
    trainer.fit(module, train, val)  # each epoch's decision is applied before the next epoch trains
    return module, trainer, callback


# --- README example end: lightning ---

# --- README example start: hf ---
# A Hugging Face Trainer run (a tiny model here; any model whose forward returns a loss), steered after each
# epoch's evaluation: `eval_loss` is the monitored `val_loss`.
import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from mimic_learn.integrations.hf import MimicCallback as MimicHFCallback


class TinyClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 2))

    def forward(self, x, labels=None):
        logits = self.net(x)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


def tiny_rows(n=512):
    torch.manual_seed(0)
    x = torch.randn(n, 8)
    labels = (x @ torch.linspace(-1, 1, 8) > 0).long()
    return [{"x": x[i], "labels": labels[i]} for i in range(n)]


def train_hf(output_dir, controller="rules", epochs=3, **callback_options):
    rows = tiny_rows()
    args = TrainingArguments(
        output_dir, num_train_epochs=epochs, learning_rate=0.05, optim="sgd", lr_scheduler_type="constant",
        per_device_train_batch_size=32, eval_strategy="epoch", logging_strategy="epoch", save_strategy="no",
        report_to="none", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    callback = MimicHFCallback(controller=controller, monitor="val_loss", mode="min", **callback_options)
    trainer = Trainer(
        model=TinyClassifier(),
        args=args,
        train_dataset=rows[:384],
        eval_dataset=rows[384:],
        callbacks=[callback],
    )
    trainer.train()  # each epoch's decision is applied before the next epoch trains
    return trainer, callback


# --- README example end: hf ---

from mimic_learn.agents.scripted import ScriptedChatModel


@pytest.fixture(scope="module")
def tracking_dir(tmp_path_factory):
    # one store for the module (creating a sqlite store takes seconds); each test has its own experiment
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture
def store(tracking_dir, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)  # nothing lands in the repository
    yield {
        "tracking_uri": f"sqlite:///{tracking_dir}/mlflow.db",
        "state_db": str(tracking_dir / "graph.sqlite"),
        "experiment": request.node.name,
    }
    mlflow.set_tracking_uri(None)


def _script(*decisions) -> ScriptedChatModel:
    return ScriptedChatModel(
        decisions=[
            {"epoch": epoch, "tool_calls": [{"name": name, "args": {**args, "reason": "test"}}]}
            for epoch, name, args in decisions
        ]
    )


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def _traces(store, run) -> list:
    mlflow.set_tracking_uri(store["tracking_uri"])
    return mlflow.search_traces(locations=[run.info.experiment_id], return_type="list")


def _tool_spans(trace) -> list[str]:
    return [s.name for s in trace.data.spans if s.name.startswith("set_")]


# ---------------------------------------------------------------------------------------------- Lightning
def test_lightning_set_lr_reaches_the_optimizer_and_mlflow_has_metrics_and_traces(store, monkeypatch):
    trained_with = []  # the lr each epoch's training steps use, read from the optimizer Lightning steps
    monkeypatch.setattr(
        Regressor,
        "on_train_epoch_start",
        lambda self: trained_with.append(self.optimizers().param_groups[0]["lr"]),
        raising=False,
    )
    script = _script((1, "set_lr", {"lr": 0.02}), (2, "set_dropout", {"dropout": 0.3}))
    module, trainer, callback = train_lightning(script, epochs=3, **store)

    # Lightning steps an epoch scheduler at the epoch's last batch, before validation and on_train_epoch_end:
    # the lr at the boundary is the one the next epoch would use. set_lr(0.02) makes epoch 2 train at exactly
    # 0.02, and since it rescaled LambdaLR's base_lrs the schedule goes on from there (x0.9 per epoch) instead
    # of snapping back to 0.05 * 0.9**epoch.
    assert trained_with == pytest.approx([0.05, 0.02, 0.02 * 0.9])
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.02 * 0.81)
    assert module.net[2].p == 0.3  # set_dropout reached the module's nn.Dropout
    assert [o.decision is not None for o in callback.outcomes] == [True, True, False]  # none after the last

    client = mlflow.MlflowClient(store["tracking_uri"])
    run = client.get_run(callback.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mimic.integration"] == "lightning"
    lrs = [v for _, v in _history(client, run.info.run_id, "lr")]  # at each boundary (after the scheduler)
    assert lrs == pytest.approx([0.05 * 0.9, 0.02 * 0.9, 0.02 * 0.81])
    assert [s for s, _ in _history(client, run.info.run_id, "val_loss")] == [1, 2, 3]
    assert [s for s, _ in _history(client, run.info.run_id, "train_loss")] == [1, 2, 3]
    assert "train_loss_epoch" not in run.data.metrics and "train_loss_step" not in run.data.metrics
    assert [v for _, v in _history(client, run.info.run_id, "dropout")] == [0.1, 0.1, 0.3]
    # Lightning steps with optimizer.step(closure): the gradient exists only after the step; the post hook sees it
    norms = _history(client, run.info.run_id, "grad_norm/net.0.weight")
    assert len(norms) == 3 and all(v > 0 for _, v in norms)

    traces = _traces(store, run)
    assert sorted(t.info.tags["epoch"] for t in traces) == ["1", "2"]
    by_epoch = {t.info.tags["epoch"]: t for t in traces}
    assert _tool_spans(by_epoch["1"]) == ["set_lr"] and _tool_spans(by_epoch["2"]) == ["set_dropout"]
    assert all(t.info.request_metadata.get("mlflow.sourceRun") == run.info.run_id for t in traces)


def test_lightning_gradient_clipping_reaches_the_closure_computed_gradients(store, monkeypatch):
    # Lightning computes gradients inside optimizer.step(closure); the module's own hook runs after the
    # callbacks', so it sees the gradients the update will use
    seen = []  # (epoch, total gradient norm) at each optimizer step

    def record(self, optimizer):
        norms = [p.grad.norm() for p in self.parameters() if p.grad is not None]
        seen.append((self.current_epoch, float(torch.linalg.vector_norm(torch.stack(norms)))))

    monkeypatch.setattr(Regressor, "on_before_optimizer_step", record, raising=False)
    train_lightning(_script((1, "set_max_grad_norm", {"max_grad_norm": 0.01})), epochs=2, **store)
    before, after = ([n for e, n in seen if e == k] for k in (0, 1))
    assert len(before) == len(after) == 12
    assert min(before) > 0.05  # unclipped in epoch 1
    assert max(after) <= 0.01 + 1e-6  # every step of epoch 2 clipped to the knob


def test_lightning_every_n_steps_decides_within_epochs(store):
    # 12 optimizer steps per epoch, 2 epochs, a decision period every 5 steps: periods end at steps 5, 10, 15,
    # 20 and (shorter) 24.
    script = _script((2, "set_lr", {"lr": 0.01}))
    module, trainer, callback = train_lightning(
        script, epochs=2, monitor="train_loss", every_n_steps=5, **store
    )

    assert [o.report.steps for o in callback.outcomes] == [5, 5, 5, 5, 4]
    assert [o.decision is not None for o in callback.outcomes] == [True, True, True, True, False]
    client = mlflow.MlflowClient(store["tracking_uri"])
    run_id = callback.run_id
    lrs = [v for _, v in _history(client, run_id, "lr")]
    # periods 1-2 in epoch 1 (lr 0.05); the set_lr after period 2 (step 10) acts from step 11 on; the epoch
    # scheduler steps at step 12 and step 24 and continues from the rescaled base: 0.01 * 0.9, 0.01 * 0.81
    assert lrs == pytest.approx([0.05, 0.05, 0.009, 0.009, 0.0081])
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01 * 0.81)
    assert len(_traces(store, client.get_run(run_id))) == 4


def test_lightning_run_that_raises_ends_failed_and_unhooks_the_optimizer(store):
    class Exploding(Regressor):
        def training_step(self, batch, batch_idx):
            if self.current_epoch == 1:
                raise RuntimeError("boom in epoch 2")
            return super().training_step(batch, batch_idx)

    callback = MimicCallback(controller=_script(), **store)
    trainer = L.Trainer(max_epochs=3, callbacks=[callback], logger=False, enable_progress_bar=False)
    x, y = torch.randn(64, 8), torch.randn(64)
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    with pytest.raises(RuntimeError, match="boom in epoch 2"):
        trainer.fit(Exploding(), loader, loader)

    client = mlflow.MlflowClient(store["tracking_uri"])
    run = client.get_run(callback.run_id)
    assert run.info.status == "FAILED" and "boom in epoch 2" in run.data.tags["mimic.error"]
    assert [s for s, _ in _history(client, run.info.run_id, "lr")] == [1]  # what epoch 1 logged stays
    assert callback.steering is None
    assert (
        not trainer.optimizers[0]._optimizer_step_pre_hooks
        and not trainer.optimizers[0]._optimizer_step_post_hooks
    )


def test_lightning_missing_monitor_says_what_to_log(store):
    with pytest.raises(ValueError, match=r"self\.log\('val_acc', value\)"):
        train_lightning(_script(), epochs=1, monitor="val_acc", **store)


# ---------------------------------------------------------------------------------------------- Hugging Face
def test_hf_set_lr_reaches_the_optimizer_and_mlflow_has_metrics_and_traces(store, tmp_path):
    script = _script((1, "set_lr", {"lr": 0.02}), (2, "set_dropout", {"dropout": 0.3}))
    trainer, callback = train_hf(tmp_path / "out", script, epochs=3, **store)

    # the constant schedule's LambdaLR recomputes lr from base_lrs at each step: the decision persists
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.02)
    # ... and HF's own log says the steps of epochs 2 and 3 ran with it
    logged = [(e["epoch"], e["learning_rate"]) for e in trainer.state.log_history if "learning_rate" in e]
    assert logged == [(1.0, 0.05), (2.0, 0.02), (3.0, 0.02)]
    assert trainer.model.net[2].p == 0.3
    assert [o.decision is not None for o in callback.outcomes] == [True, True, False]

    client = mlflow.MlflowClient(store["tracking_uri"])
    run = client.get_run(callback.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mimic.integration"] == "hf"
    assert [v for _, v in _history(client, run.info.run_id, "lr")] == pytest.approx([0.05, 0.02, 0.02])
    eval_losses = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    assert [v for _, v in _history(client, run.info.run_id, "val_loss")] == pytest.approx(eval_losses)
    train_losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert [v for _, v in _history(client, run.info.run_id, "train_loss")] == pytest.approx(train_losses)
    assert not {"eval_runtime", "val_runtime", "val_samples_per_second", "learning_rate"} & set(
        run.data.metrics
    )
    norms = _history(client, run.info.run_id, "grad_norm/net.0.weight")
    assert len(norms) == 3 and all(v > 0 for _, v in norms)

    traces = _traces(store, run)
    by_epoch = {t.info.tags["epoch"]: t for t in traces}
    assert sorted(by_epoch) == ["1", "2"]
    assert _tool_spans(by_epoch["1"]) == ["set_lr"] and _tool_spans(by_epoch["2"]) == ["set_dropout"]


@pytest.mark.slow  # ~4 s; every_n_steps is also tested on Lightning in the default run
def test_hf_every_n_steps_decides_within_epochs(store, tmp_path):
    rows = tiny_rows()
    args = TrainingArguments(
        tmp_path / "out", num_train_epochs=2, learning_rate=0.05, optim="sgd", lr_scheduler_type="constant",
        per_device_train_batch_size=32, logging_steps=5, save_strategy="no", report_to="none", use_cpu=True,
        disable_tqdm=True,
    )  # fmt: skip
    callback = MimicHFCallback(
        controller=_script((1, "set_lr", {"lr": 0.01})), monitor="train_loss", every_n_steps=5, **store
    )
    trainer = Trainer(model=TinyClassifier(), args=args, train_dataset=rows[:384], callbacks=[callback])
    trainer.train()

    # 12 steps per epoch x 2: periods end at steps 5, 10, 15, 20 and (shorter) 24
    assert [o.report.steps for o in callback.outcomes] == [5, 5, 5, 5, 4]
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]  # logged at steps 5, 10, 15, 20
    assert [o.report.train_loss for o in callback.outcomes] == pytest.approx([*losses, losses[-1]])
    logged_lr = [e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e]
    assert logged_lr == [0.05, 0.01, 0.01, 0.01]  # the decision after step 5 acts from step 6
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    history = _history(mlflow.MlflowClient(store["tracking_uri"]), callback.run_id, "lr")
    assert history == [(1, 0.05), (2, 0.01), (3, 0.01), (4, 0.01), (5, 0.01)]


def test_hf_missing_monitor_says_how_to_evaluate_and_fail_unhooks_the_optimizer(store, tmp_path):
    args = TrainingArguments(
        tmp_path / "out", num_train_epochs=2, logging_strategy="epoch", save_strategy="no", report_to="none",
        use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    callback = MimicHFCallback(controller=_script(), **store)  # monitors val_loss; nothing evaluates
    trainer = Trainer(model=TinyClassifier(), args=args, train_dataset=tiny_rows(64), callbacks=[callback])
    with pytest.raises(
        ValueError, match=r"'val_loss' \(HF name 'eval_loss'\).*eval_strategy='epoch'"
    ) as raised:
        trainer.train()
    assert "logged: train_loss" in str(raised.value)
    callback.fail(raised.value)
    assert callback.steering is None and callback.run_id is None  # no period was closed: no MLflow run
    inner = trainer.optimizer.optimizer
    assert not inner._optimizer_step_pre_hooks and not inner._optimizer_step_post_hooks


# ---------------------------------------------------------------------------------------------- README
@pytest.mark.slow  # ~10 s: a new default store, the rules controller; the examples themselves run above
def test_readme_examples_run_with_their_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default MLflow store (sqlite:///mlflow.db) and graph state land here
    try:
        _, _, lightning_callback = train_lightning()
        _, hf_callback = train_hf(tmp_path / "out")
    finally:
        mlflow.set_tracking_uri(None)
    assert len(lightning_callback.outcomes) == 3 and len(hf_callback.outcomes) == 3
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("mimic-user-loop").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["hugging-face", "lightning"]
    assert all(r.info.status == "FINISHED" for r in runs)
