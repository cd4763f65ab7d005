"""Models behind a registry, with a seeded initialiser shared by theta_0 and random re-init."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


class MLP(nn.Module):
    """Fully connected ReLU net; LeNet-300-100 shape by default (40-300-100-10 on MNIST-1D)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, widths: tuple[int, ...] = (300, 100)):
        super().__init__()
        dims = [math.prod(input_shape), *widths]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Conv1D(nn.Module):
    """A small 1-D conv net for sequences (MNIST-1D): stride-2 convs, then a linear classifier."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, widths: tuple[int, ...] = (32, 32, 32)):
        super().__init__()
        length = input_shape[-1]
        in_ch = 1 if len(input_shape) == 1 else input_shape[0]
        layers: list[nn.Module] = []
        for i, ch in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers += [nn.Conv1d(in_ch, ch, kernel_size=3, stride=stride, padding=1), nn.ReLU()]
            in_ch = ch
            length = (length + 2 - 3) // stride + 1
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_ch * length, num_classes)
        self._unsqueeze = len(input_shape) == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._unsqueeze:
            x = x.unsqueeze(1)
        return self.classifier(self.features(x).flatten(1))


@dataclass(frozen=True)
class ModelEntry:
    builder: Callable[..., nn.Module]
    default_widths: tuple[int, ...]
    description: str


MODELS: dict[str, ModelEntry] = {
    "mlp": ModelEntry(MLP, (300, 100), "fully connected ReLU net; --widths are the hidden layer sizes"),
    "conv1d": ModelEntry(Conv1D, (32, 32, 32), "1-D conv net; --widths are the conv channel counts"),
}

INIT_SCHEME = "kaiming_normal_fan_in_relu+zero_bias"


def init_weights(model: nn.Module, seed: int) -> nn.Module:
    """Draw all weights from one seeded generator (Kaiming normal, zero biases), in module order.

    Written out rather than calling ``reset_parameters`` because that draws from torch's global RNG;
    here theta_0 and every random re-initialisation are reproducible from their recorded seed.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu", generator=g)
                if m.bias is not None:
                    m.bias.zero_()
    return model


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int,
                widths: tuple[int, ...] | None = None) -> nn.Module:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    entry = MODELS[name]
    return entry.builder(tuple(input_shape), num_classes, tuple(widths or entry.default_widths))


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> module for every layer whose ``weight`` can be pruned (Linear and Conv)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))}
