"""Shared fixtures: small real models and inputs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(2)


def _devices() -> list[str]:
    """Devices the device-sensitive tests run on: cpu, and cuda where there is one.

    RSCERT_TEST_DEVICES (comma list, e.g. ``cuda``) picks them; naming a device this machine lacks
    is an error, not a skip."""
    chosen = os.environ.get("RSCERT_TEST_DEVICES")
    if not chosen:
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    names = [d.strip() for d in chosen.split(",") if d.strip()]
    if "cuda" in names and not torch.cuda.is_available():
        raise RuntimeError("RSCERT_TEST_DEVICES names cuda, but torch sees no CUDA device")
    return names


DEVICES = _devices()


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """The device of a device-sensitive test (the test id carries it: [cpu] or [cuda])."""
    return request.param


def linear_classifier(w: torch.Tensor, b: float) -> nn.Module:
    """f(x) = argmax(W x + c) with two classes: class 0 iff w.x + b > 0."""
    layer = nn.Linear(w.numel(), 2)
    with torch.no_grad():
        layer.weight.copy_(torch.stack([w, -w]) / 2)
        layer.bias.copy_(torch.tensor([b / 2, -b / 2]))
    return layer


def tiny_cnn(num_classes: int = 5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, num_classes)
    )


@pytest.fixture
def cnn() -> nn.Module:
    return tiny_cnn()
