"""Classifiers from timm (``--model timm:NAME``): the strong off-the-shelf models (ViT, BEiT, ...) that
denoised smoothing puts behind a denoiser (Carlini et al. 2023 use BEiT-large).

The network is built with ``timm.create_model(NAME, pretrained=False)``: nothing is downloaded, the
weights come from ``--checkpoint``. timm's own normalisation (the model's ``pretrained_cfg`` mean and
std, applied to [0, 1] inputs) is the default (``--normalize auto`` -> ``timm``), and its declared
input size is what a diffusion denoiser resizes its output to.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from rscert.constants import TIMM_NORMALIZATION

TIMM_PREFIX = "timm:"
__all__ = ["TIMM_NORMALIZATION", "TIMM_PREFIX", "build_timm", "is_timm", "timm_classes_in", "timm_input_size",
           "timm_normalization"]


def is_timm(spec: str | None) -> bool:
    return bool(spec) and spec.startswith(TIMM_PREFIX)


def _name(spec: str) -> str:
    return spec.removeprefix(TIMM_PREFIX)


def build_timm(spec: str, num_classes: int | None) -> nn.Module:
    """``timm.create_model(NAME, pretrained=False[, num_classes])``; an unknown name (or no timm) raises
    ValueError."""
    try:
        import timm
    except ImportError:
        raise ValueError("timm models need timm: pip install 'rscert[denoise]'") from None

    name = _name(spec)
    if not timm.is_model(name):
        raise ValueError(f"timm has no model {name!r} (timm.list_models() lists them)")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    return timm.create_model(name, pretrained=False, **kwargs)


def timm_classes_in(spec: str, state: Mapping[str, torch.Tensor]) -> int | None:
    """The class count of a checkpoint for ``timm:NAME``: rows of its classifier head's weight."""
    import timm

    name = _name(spec)
    if not timm.is_model(name):
        return None
    heads = timm.models.get_pretrained_cfg_value(name, "classifier") or "head"
    for head in [heads] if isinstance(heads, str) else list(heads):
        weight = state.get(f"{head}.weight")
        if weight is not None and weight.dim() == 2:
            return int(weight.shape[0])
    return None


def _data_config(net: nn.Module) -> dict:
    import timm.data

    return timm.data.resolve_data_config({}, model=net)


def timm_normalization(net: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) that the timm model expects its [0, 1] inputs to be normalised with."""
    cfg = _data_config(net)
    return tuple(float(m) for m in cfg["mean"]), tuple(float(s) for s in cfg["std"])


def timm_input_size(net: nn.Module) -> tuple[int, int]:
    """(height, width) of the model's declared input."""
    size = _data_config(net)["input_size"]
    return int(size[-2]), int(size[-1])
