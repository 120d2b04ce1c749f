"""Denoiser architectures of denoised smoothing (Salman et al. 2020): DnCNN (Zhang et al. 2017) and
MemNet (Tai et al. 2017), written for rscert with the module names of the published denoised-smoothing
checkpoints, so that their state dicts load unchanged.

Both work on images in [0, 1] pixel space and predict a residual: DnCNN returns x - net(x), MemNet
x + net(x). The published names are ``cifar_dncnn`` (64 channels, depth 17), ``cifar_dncnn_wide``
(128 channels), ``memnet`` (64 channels, 3 memory blocks of 6 residual blocks) and their ImageNet
twins ``imagenet_dncnn`` / ``imagenet_memnet`` (the same networks, saved under DataParallel, hence
``module.`` prefixes). rscert's own names are ``dncnn``, ``dncnn_wide`` and ``memnet``, for any
channel count. Depth, width and channel count are read off a checkpoint's state dict, so a network
of any size in these families loads.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch
from torch import nn


class DnCNN(nn.Module):
    """conv+ReLU, (depth - 2) x (conv+BN+ReLU), conv; the output is x minus the predicted noise."""

    def __init__(self, channels: int = 3, width: int = 64, depth: int = 17) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"DnCNN depth must be at least 2, got {depth}")
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1, bias=True), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False),
                       nn.BatchNorm2d(width, eps=1e-4, momentum=0.95), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, channels, 3, padding=1, bias=False))
        self.dncnn = nn.Sequential(*layers)
        self.channels, self.width, self.depth = channels, width, depth
        for m in self.modules():  # orthogonal convolutions, a zero last layer: starts as the identity
            if isinstance(m, nn.Conv2d):
                nn.init.orthogonal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.zeros_(layers[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x - self.dncnn(x)


class _BNReLUConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, padding: int = 1) -> None:
        super().__init__()
        self.add_module("bn", nn.BatchNorm2d(cin))
        self.add_module("relu", nn.ReLU(inplace=False))
        self.add_module("conv", nn.Conv2d(cin, cout, kernel, 1, padding, bias=False))


class _ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.relu_conv1 = _BNReLUConv(width, width)
        self.relu_conv2 = _BNReLUConv(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x + self.relu_conv2(self.relu_conv1(x))


class _MemoryBlock(nn.Module):
    """Recursive residual blocks (short-term memory) and a 1x1 gate over them and every earlier
    block's output (long-term memory)."""

    def __init__(self, width: int, resblocks: int, earlier: int) -> None:
        super().__init__()
        self.recursive_unit = nn.ModuleList(_ResidualBlock(width) for _ in range(resblocks))
        self.gate_unit = _BNReLUConv((resblocks + earlier) * width, width, kernel=1, padding=0)

    def forward(self, x: torch.Tensor, memory: list[torch.Tensor]) -> torch.Tensor:  # noqa: D102
        short = []
        for block in self.recursive_unit:
            x = block(x)
            short.append(x)
        return self.gate_unit(torch.cat(short + memory, 1))


class MemNet(nn.Module):
    """Feature extractor, memory blocks, reconstructor; the output is x plus the reconstruction."""

    def __init__(self, channels: int = 3, width: int = 64, memblocks: int = 3, resblocks: int = 6) -> None:
        super().__init__()
        self.feature_extractor = _BNReLUConv(channels, width)
        self.reconstructor = _BNReLUConv(width, channels)
        self.dense_memory = nn.ModuleList(_MemoryBlock(width, resblocks, i + 1) for i in range(memblocks))
        self.channels, self.width, self.memblocks, self.resblocks = channels, width, memblocks, resblocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = self.feature_extractor(x)
        memory = [out]
        for block in self.dense_memory:
            out = block(out, memory)
            memory = memory + [out]
        return x + self.reconstructor(out)


def dncnn(channels: int = 3) -> DnCNN:
    return DnCNN(channels, 64, 17)


def dncnn_wide(channels: int = 3) -> DnCNN:
    return DnCNN(channels, 128, 17)


def memnet(channels: int = 3) -> MemNet:
    return MemNet(channels, 64, 3, 6)


DENOISER_ARCHS: dict[str, Callable[[int], nn.Module]] = {"dncnn": dncnn, "dncnn_wide": dncnn_wide, "memnet": memnet}
"""rscert's denoiser architectures by name (the argument is the image's channel count)."""

PUBLISHED_ARCHS = {"cifar_dncnn": "dncnn", "cifar_dncnn_wide": "dncnn_wide", "imagenet_dncnn": "dncnn",
                   "memnet": "memnet", "imagenet_memnet": "memnet"}
"""The ``arch`` names of the published denoised-smoothing checkpoints -> rscert's family names."""


def _indices(state: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := re.match(pattern, k))})


def denoiser_from_state(arch: str, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """An untrained network of family ``arch`` (rscert or published name) shaped like ``state``
    (a state dict without prefixes): channels, width and depth are read off the tensors' shapes."""
    family = PUBLISHED_ARCHS.get(arch, arch)
    if family not in DENOISER_ARCHS:
        raise ValueError(f"unknown denoiser architecture {arch!r}; known: "
                         f"{sorted(set(DENOISER_ARCHS) | set(PUBLISHED_ARCHS))}")
    if family in ("dncnn", "dncnn_wide"):
        convs = [i for i in _indices(state, r"dncnn\.(\d+)\.weight$") if state[f"dncnn.{i}.weight"].dim() == 4]
        if not convs:
            raise ValueError("not a DnCNN state dict (no dncnn.<i>.weight convolutions)")
        first = state[f"dncnn.{convs[0]}.weight"]
        return DnCNN(channels=int(first.shape[1]), width=int(first.shape[0]), depth=len(convs))
    extractor = state.get("feature_extractor.conv.weight")
    if extractor is None:
        raise ValueError("not a MemNet state dict (no feature_extractor.conv.weight)")
    blocks = _indices(state, r"dense_memory\.(\d+)\.")
    res = _indices(state, r"dense_memory\.0\.recursive_unit\.(\d+)\.")
    return MemNet(channels=int(extractor.shape[1]), width=int(extractor.shape[0]), memblocks=len(blocks),
                  resblocks=len(res))
