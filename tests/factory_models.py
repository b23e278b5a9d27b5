"""Model factories for the tests of ``package.module:callable`` (your own code, trusted).

Importable as ``factory_models`` when ``tests/`` is on the path (pytest puts it there; the CLI
and server tests set PYTHONPATH).
"""

from __future__ import annotations

import torch
from torch import nn

CALLS = []  # every call of a factory, so tests can prove whether code ran


class SmallNet(nn.Module):
    """Two conv blocks with BatchNorm and a classifier; declares its input shape."""

    input_shape = (1, 3, 16, 16)
    categories = ("cat", "dog", "fox", "owl")

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
            nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def small_net() -> nn.Module:
    """A randomly initialised SmallNet (the caller seeds it)."""
    CALLS.append("small_net")
    return SmallNet()


def no_shape() -> nn.Module:
    """A model that declares no input shape."""
    CALLS.append("no_shape")
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten())


def not_a_module():
    CALLS.append("not_a_module")
    return 42


def raises() -> nn.Module:
    CALLS.append("raises")
    raise RuntimeError("the weights server is down")


class Builders:
    """A namespace: ``factory_models:Builders.small`` names a nested callable."""

    small = staticmethod(small_net)
