"""Models: the paper's MNIST CNN, torchvision ResNet-18 for CIFAR-10, and a tiny digits net for fast tests."""

from __future__ import annotations

import torch
from torch import nn


class PaperCNN(nn.Module):
    """The MIMIC-Learn paper's MNIST CNN, exactly: 2 conv+ReLU+maxpool, FC 128+ReLU+Dropout(0.2), classifier."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.2, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(1600, 128),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class DigitsNet(nn.Module):
    """A small MLP for sklearn's 8x8 digits: fast enough for unit tests, with a dropout knob."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.2, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def resnet18(num_classes: int = 10, cifar_stem: bool = True) -> nn.Module:
    """torchvision ResNet-18; ``cifar_stem`` swaps the 7x7/stride-2 stem and max-pool for a 3x3/stride-1 conv,
    the usual variant for 32x32 inputs."""
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if cifar_stem:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


DEFAULT_MODEL = {
    "digits": "digits_net",
    "mnist": "paper_cnn",
    "mnist32": "resnet18_cifar",
    "cifar10": "resnet18_cifar",
    "synthetic": "resnet18_cifar",
}


def build_model(name: str, num_classes: int = 10, dropout: float | None = None) -> nn.Module:
    kwargs = {} if dropout is None else {"dropout": dropout}
    if name == "paper_cnn":
        return PaperCNN(num_classes, **kwargs)
    if name == "digits_net":
        return DigitsNet(num_classes, **kwargs)
    if name in ("resnet18_cifar", "resnet18"):
        if dropout:
            raise ValueError("ResNet-18 has no dropout layers; leave dropout unset for it")
        return resnet18(num_classes, cifar_stem=name == "resnet18_cifar")
    raise ValueError(f"unknown model {name!r}: use paper_cnn, digits_net, resnet18_cifar or resnet18")


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
