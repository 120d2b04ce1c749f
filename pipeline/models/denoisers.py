"""Denoised smoothing (Salman et al. 2020): the base classifier is f(d(x + e)), a denoiser d in front
of an off-the-shelf classifier f.

The denoiser works in [0, 1] pixel space on the noisy image, before the classifier's own
normalisation. :class:`Denoised` is the composition; the sampler casts its float32 noisy batch to the
forward precision first, so the base classifier that is smoothed, hence certified, is f∘d∘cast: a
fixed function of the float32 noisy input, and Cohen et al.'s guarantee (Theorem 1) holds for it as
for any other classifier. Nothing about the denoiser enters the statistics; it only has to be the
same function for every draw, which the weight hash below checks on every worker.

``--denoiser SPEC`` is one of

* a checkpoint file (local path or fsspec URL) in the published denoised-smoothing format
  ``{"arch": ..., "state_dict": ...}`` (``cifar_dncnn``, ``cifar_dncnn_wide``, ``memnet``,
  ``imagenet_dncnn``, ``imagenet_memnet``; DataParallel's ``module.`` prefixes are stripped) or
  ``rscert train --denoiser``'s (``dncnn``, ``dncnn_wide``, ``memnet``), read with
  ``torch.load(weights_only=True)`` unless ``--trust-checkpoint``;
* ``package.module:factory``: a callable returning an ``nn.Module`` (given ``sigma=`` if it takes
  that argument), built under the same fixed seed as ``--random-init`` models;
* ``diffusion:FOLDER`` (or a local folder): a one-shot diffusion denoiser (:mod:`.diffusion`).

Whatever builds it, the denoiser's weights are hashed like the classifier's (``weights_sha256``)
and the hash is part of the run's fingerprint, so an output folder never mixes two denoisers.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from rscert.models.denoiser_archs import PUBLISHED_ARCHS, denoiser_from_state
from rscert.models.load import (
    RANDOM_INIT_SEED,
    ModelError,
    _factory,
    net_state_dict,
    read_checkpoint_hashed,
    weights_sha256,
)
from rscert.store.atomic import atomic_path

DIFFUSION_PREFIX = "diffusion:"
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".tar", ".ckpt", ".bin")


class Denoised(nn.Module):
    """f(d(x)): the base classifier of denoised smoothing. Keeps both halves' own ``eval`` state."""

    def __init__(self, denoiser: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.classifier(self.denoiser(x))


@dataclass(frozen=True)
class LoadedDenoiser:
    """A ready denoiser and the facts the manifest and the rows record about it."""

    module: nn.Module
    spec: str
    kind: str  # checkpoint | factory | diffusion
    arch: str | None
    checkpoint_sha256: str | None  # SHA-256 of the checkpoint file (of the folder's files, for diffusion)
    weights_sha256: str
    detail: dict = field(default_factory=dict)  # e.g. the diffusion timestep

    def facts(self) -> dict:
        """What the manifest records and the fingerprint covers."""
        return {"spec": self.spec, "kind": self.kind, "arch": self.arch, "checkpoint_sha256": self.checkpoint_sha256,
                "weights_sha256": self.weights_sha256, **self.detail}


def denoiser_kind(spec: str) -> str:
    """checkpoint | factory | diffusion, from the spec's form (see the module docstring)."""
    if spec.startswith(DIFFUSION_PREFIX):
        return "diffusion"
    if "://" in spec:
        return "checkpoint"
    path = Path(spec)
    if path.is_dir():
        return "diffusion"
    if path.is_file() or spec.endswith(_CHECKPOINT_SUFFIXES):
        return "checkpoint"
    if _FACTORY.match(spec):
        return "factory"
    raise ModelError(f"denoiser: {spec!r} is neither a checkpoint file, a package.module:factory, nor a "
                     f"diffusion folder ({DIFFUSION_PREFIX}FOLDER)")


def load_denoiser(spec: str, sigma: float, trust_checkpoint: bool = False, storage_options: dict | None = None,
                  output_size: tuple[int, int] | None = None) -> LoadedDenoiser:
    """Build the denoiser of ``spec`` for noise level ``sigma`` (in [0, 1] pixel units), in eval mode.

    ``output_size`` (height, width): the classifier's input size, to which a diffusion denoiser
    resizes its output when it differs (None: keep the input's size)."""
    kind = denoiser_kind(spec)
    if kind == "diffusion":
        from rscert.models.diffusion import load_diffusion_denoiser

        folder = spec.removeprefix(DIFFUSION_PREFIX)
        module, folder_sha, detail = load_diffusion_denoiser(folder, sigma, output_size=output_size)
        arch, sha = detail.pop("arch"), folder_sha
    elif kind == "checkpoint":
        module, arch, sha = _from_checkpoint(spec, trust_checkpoint, storage_options)
        detail = {}
    else:
        module, arch, sha, detail = _from_factory(spec, sigma), None, None, {}
    module = module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return LoadedDenoiser(module=module, spec=spec, kind=kind, arch=arch, checkpoint_sha256=sha,
                          weights_sha256=weights_sha256(module), detail=detail)


def _from_checkpoint(path: str, trust: bool, storage_options: dict | None) -> tuple[nn.Module, str, str]:
    raw, sha = read_checkpoint_hashed(path, trust, storage_options)
    candidates, meta = net_state_dict(raw)
    arch = meta.get("arch")
    if not arch:
        raise ModelError(f"denoiser: {path!r} records no 'arch'; expected the denoised-smoothing format "
                         "{'arch': ..., 'state_dict': ...}")
    errors = []
    for cand in candidates:
        try:
            net = denoiser_from_state(arch, cand)
        except ValueError as exc:
            errors.append(str(exc))
            continue
        try:
            net.load_state_dict(cand, strict=True)
        except RuntimeError as exc:
            errors.append(str(exc).splitlines()[0])
            continue
        return net, arch, sha
    known = sorted(set(PUBLISHED_ARCHS) | {"dncnn", "dncnn_wide", "memnet"})
    raise ModelError(f"denoiser: {path!r} (arch {arch!r}) does not load as a denoiser of {known}: {errors[0]}")


def _from_factory(spec: str, sigma: float) -> nn.Module:
    factory = _factory(spec)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs = {"sigma": sigma} if "sigma" in params else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        module = factory(**kwargs)
    if not isinstance(module, nn.Module):
        raise ModelError(f"denoiser: {spec!r} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def save_denoiser(path: str | Path, module: nn.Module, arch: str, **extra: object) -> None:
    """Write the published format, ``{"arch", "state_dict", ...}``, atomically."""
    payload = {"arch": arch, **extra, "state_dict": module.state_dict()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
