"""Small real models that tests (and subprocesses they start) load by ``tests.zoo:NAME``."""

import torch
from torch import nn


def tiny_cnn(num_classes: int = 4) -> nn.Module:
    """A fixed random small CNN for 3-channel images of any size (deterministic weights)."""
    gen = torch.Generator().manual_seed(1234)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                        nn.Linear(24, num_classes))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return net
