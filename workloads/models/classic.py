"""S5's networks, as the reports built them.

AudioMNIST MLP: fully connected layers on standardized MFCC features, Xavier-initialized, with
the report's bipolar sigmoid (2/(1+e^-x) - 1, which is tanh(x/2)) or ReLU. The report's hidden
layouts are given relative to n = (inputs + outputs) / 2:

    h1            one hidden layer of n          (the report's best: 96.12% on MFCC + deltas)
    h2            two hidden layers of n
    h2_two_thirds two hidden layers of 2n/3
    h2_third_half two hidden layers of n/3 and n/2

GTZAN CNN: Conv2D(32, 3×3, ReLU) → MaxPool(3×3, stride 2) → BatchNorm → Flatten → Dense(10) on a
128×128 log-mel image. Keras counts 1,230,538 parameters (1,230,474 trainable: BatchNorm's
moving mean and variance are the 64 others); PyTorch keeps those two as buffers, so its
`parameters()` are the 1,230,474 trainable ones (tests/test_baselines.py pins both).
"""
from __future__ import annotations

import torch
from torch import nn

LAYOUTS = {  # hidden layer sizes as fractions of n = (inputs + outputs) / 2
    "h1": (1.0,),
    "h2": (1.0, 1.0),
    "h2_two_thirds": (2 / 3, 2 / 3),
    "h2_third_half": (1 / 3, 1 / 2),
}
GTZAN_KERAS_PARAMS = 1_230_538
GTZAN_KERAS_TRAINABLE = 1_230_474


class BipolarSigmoid(nn.Module):
    """2 / (1 + e^-x) - 1, the report's activation; equal to tanh(x / 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 2)


ACTIVATIONS = {"relu": nn.ReLU, "bipolar_sigmoid": BipolarSigmoid}


def hidden_sizes(layout: str, n_inputs: int, n_outputs: int) -> list[int]:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown MLP layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    n = (n_inputs + n_outputs) / 2
    return [max(1, int(round(f * n))) for f in LAYOUTS[layout]]


class MLP(nn.Module):
    def __init__(self, n_inputs: int, n_outputs: int, layout: str = "h1", activation: str = "relu",
                 dropout: float = 0.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(ACTIVATIONS)}")
        layers, width = [], n_inputs
        for size in hidden_sizes(layout, n_inputs, n_outputs):
            layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, n_outputs))
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Linear):  # Xavier (Glorot) uniform, zero bias: the report's init
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class GenreCNN(nn.Module):
    """The GTZAN report's CNN; input (B, 1, 128, 128)."""

    def __init__(self, n_classes: int = 10, size: int = 128):
        super().__init__()
        self.conv = nn.Conv2d(1, 32, 3)
        self.pool = nn.MaxPool2d(3, stride=2)
        # Keras' defaults: momentum 0.99 (PyTorch counts 1 - that), epsilon 1e-3
        self.norm = nn.BatchNorm2d(32, eps=1e-3, momentum=0.01)
        side = (size - 2 - 3) // 2 + 1
        self.out = nn.Linear(32 * side * side, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.pool(torch.relu(self.conv(x))))
        return self.out(torch.flatten(x, 1))


def keras_parameter_count(model: nn.Module) -> int:
    """What Keras' summary counts: the parameters plus BatchNorm's moving mean and variance."""
    stats = sum(m.running_mean.numel() + m.running_var.numel() for m in model.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm))
    return sum(p.numel() for p in model.parameters()) + stats
