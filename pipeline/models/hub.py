"""torchvision's named weights (``--model resnet50:IMAGENET1K_V2``) from the local torch hub cache.

rscert never downloads at run time: the weights file must already be where torchvision caches it
(``$TORCH_HOME/hub/checkpoints/<file>``, by default ``~/.cache/torch/hub/checkpoints``), e.g. copied
there, or fetched once on a machine with network by ``torchvision.models.get_model(name, weights=...)``.
The file is loaded with ``torch.load(weights_only=True)`` and hashed like any checkpoint, so the run
records its SHA-256; ``DEFAULT`` is resolved to the member it names, which the run records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlparse


@dataclass(frozen=True)
class NamedWeights:
    arch: str  # torchvision model name
    name: str  # the weights enum member, DEFAULT resolved (IMAGENET1K_V2)
    enum: str  # the enum's class name (ResNet50_Weights)
    file: str  # where the local torch hub cache keeps them
    num_classes: int | None  # len(meta["categories"])

    @property
    def spec(self) -> str:
        return f"{self.arch}:{self.name}"


def named_weights(spec: str) -> NamedWeights | None:
    """The torchvision weights ``spec`` names (``resnet50:IMAGENET1K_V2``), or None when ``spec`` is not of
    that form (then a ``module:factory``)."""
    arch, sep, tag = spec.partition(":")
    if not sep or not tag or "." in arch:
        return None
    import torch
    import torchvision

    if arch not in torchvision.models.list_models():
        return None
    enum = torchvision.models.get_model_weights(arch)
    if tag not in enum.__members__:
        return None
    weights = enum[tag]  # DEFAULT is an alias: the member it names
    file = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(weights.url).path))
    categories = weights.meta.get("categories")
    return NamedWeights(arch, weights.name, type(weights).__name__, file, len(categories) if categories else None)
