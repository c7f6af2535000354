"""The outcome bank's design: the induced pathologies and the tasks a situation can come from (evals/bank.py).

Extend the bank with a task of your own by adding an entry to ``TASKS`` (a ``TrainConfig`` template, the run
length and, for a user's own loop, ``loop``: a key of ``evals.loop_tasks.LOOP_TASKS``) and a line to
``bank.default_situations`` (or pass ``Situation`` objects to ``build_bank`` directly).
"""

from __future__ import annotations

# Induced pathologies: config overrides for the whole run, and knob settings for single epochs (``events``:
# {epoch: {knob: value}} applied before that epoch and undone after it).
PATHOLOGIES: dict[str, dict] = {
    "none": {},
    "lr_x30": {"lr_factor": 30.0},  # divergence / oscillation
    "lr_div100": {"lr_factor": 0.01},  # stall
    "dropout_0.8": {"config": {"dropout": 0.8}},
    "tiny_data": {"config": {"regime": 60}},  # overfitting on 60 images
    "nan_spike": {"spike": True},  # an inf planted in a weight before the boundary's epoch: NaN loss
    # class 3 keeps 5% of its training images; judged by macro F1, where the rare class counts as much as any
    "rare_class": {"config": {"rare_class": "3:0.05", "monitor": "macro_f1"}},
}

# The shipped design's induced pathologies on MNIST (mnist10 leaves out the rare class: one image per class)
_MNIST_PATHOLOGIES = ("none", "lr_x30", "lr_div100", "nan_spike", "rare_class")

# Tasks: a TrainConfig template and the run length, and the shipped design's situations from it (seeds x
# pathologies x boundaries, see bank.default_situations). MNIST reads $MIMIC_MNIST_DIR or <repo>/../shared/data.
TASKS: dict[str, dict] = {
    # digits at lr 0.01, where 12 epochs of Adam level off (val acc ~0.96; v1's lr 1e-3 was still climbing, so
    # lr x10 was the best action in every healthy situation and a constant "raise the lr" policy came near rules)
    "digits": {
        "config": {"task": "digits", "lr": 0.01},
        "epochs": 12,
        "seeds": 6,
        "pathologies": tuple(PATHOLOGIES),
        "boundaries": (3, 7),
    },
    "mnist100": {
        "config": {"task": "mnist", "regime": 100, "val_size": 500},
        "epochs": 8,
        "seeds": 2,
        "pathologies": _MNIST_PATHOLOGIES,
        "boundaries": (3,),
    },
    "mnist600": {
        "config": {"task": "mnist", "regime": 600, "val_size": 500},
        "epochs": 8,
        "seeds": 1,
        "pathologies": _MNIST_PATHOLOGIES,
        "boundaries": (3,),
    },
    "mnist10": {
        "config": {"task": "mnist", "regime": 10, "val_size": 500},
        "epochs": 8,
        "seeds": 2,
        "pathologies": _MNIST_PATHOLOGIES[:-1],
        "boundaries": (3,),
    },
    # 6000 images: 6 epochs, not 8, so that every candidate's rollout to the end (3 epochs x 3 orders) stays
    # within minutes per situation on one CPU thread (about 2.7 s an epoch)
    "mnist6000": {
        "config": {"task": "mnist", "regime": 6000, "val_size": 500},
        "epochs": 6,
        "seeds": 1,
        "pathologies": _MNIST_PATHOLOGIES,
        "boundaries": (3,),
    },
    # the blog proxy at small size: ResNet-18 (CIFAR stem) on MNIST padded to 32x32, SGD with momentum and a
    # StepLR that divides the lr by 10 after epoch 2, as the proxy does after epoch 5 of 10 (about 8 s an epoch)
    "resnet_proxy": {
        "config": {
            "task": "mnist32",
            "regime": 128,
            "val_size": 256,
            "model": "resnet18_cifar",
            "optimizer": "sgd",
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 1e-3,
            "schedule": "step",
            "step_size": 2,
            "gamma": 0.1,
            "batch_size": 32,
        },
        "epochs": 4,
        "seeds": 1,
        "pathologies": ("none", "lr_x30", "nan_spike"),
        "boundaries": (2,),
    },
    # a regression in a user's own loop, steered through LoopTrainer (what Steering wraps): the diabetes MLP
    # of examples/regression_diabetes.py, monitor val_mse (lower is better); evals/loop_tasks.py
    "diabetes": {
        "config": {"task": "external", "lr": 3e-3, "dropout": 0.1, "batch_size": 32},
        "epochs": 30,
        "loop": "diabetes",
        "seeds": 2,
        "pathologies": ("none", "lr_x30", "lr_div100", "dropout_0.8", "nan_spike"),
        "boundaries": (5, 15),
    },
}


DEFAULT_TASKS = ("digits", "mnist100", "mnist600", "mnist10", "mnist6000", "resnet_proxy", "diabetes")
