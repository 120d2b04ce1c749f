"""Build and load base classifiers: torchvision names, rscert's own architectures, ``module:factory``
paths, plain state dicts and the checkpoint format of the published smoothing models.

Every model rscert certifies is ``Sequential(Normalize(mean, std), net)``: normalisation is part of
the model, so noise is added in [0, 1] pixel space before it (Cohen et al. 2019, as in their code).
The published checkpoints are ``{"arch": ..., "state_dict": ...}`` dicts whose state dict belongs to
that Sequential, with keys ``1.<...>`` and, for nets trained under DataParallel, ``1.module.<...>``.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import io
import os
import pickle
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rscert.constants import NORMALIZATIONS
from rscert.errors import ModelError  # its home is rscert.errors (torch-free); imported from here too
from rscert.models.archs import ARCHS
from rscert.models.hub import named_weights
from rscert.models.timm_models import (
    TIMM_NORMALIZATION,
    build_timm,
    is_timm,
    timm_classes_in,
    timm_input_size,
    timm_normalization,
)
from rscert.store.atomic import atomic_path


class Normalize(nn.Module):
    """(x - mean) / std per channel. mean/std are non-persistent buffers: not part of the state dict,
    exactly like the published NormalizeLayer, so its checkpoints load unchanged."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


@dataclass(frozen=True)
class LoadedModel:
    """A ready model and the facts the run manifest records about it."""

    model: nn.Module
    spec: str
    num_classes: int | None
    normalize: str
    checkpoint: str | None
    checkpoint_sha256: str | None
    weights_sha256: str
    input_size: tuple[int, int] | None = None  # (height, width) the classifier declares (timm), if any
    weights: str = "checkpoint"  # where the weights came from: checkpoint, factory, random_init, torchvision ...


def file_sha256(path: str | Path, storage_options: dict | None = None) -> str:
    """SHA-256 of a file at a local path or any fsspec URL."""
    return _read_hashed(path, storage_options)[1]


def _read_hashed(path: str | Path, storage_options: dict | None = None) -> tuple[bytes, str]:
    """A checkpoint's bytes and their SHA-256, hashed while streaming (one read, local or remote)."""
    from rscert.store.storage import StorageError, filesystem, is_remote, reaching

    text = str(path)
    try:
        fs, where = filesystem(text, storage_options, "checkpoint") if is_remote(text) else (None, text.removeprefix("file://"))
    except StorageError as exc:
        raise ModelError(str(exc)) from None
    digest, buffer = hashlib.sha256(), io.BytesIO()
    try:
        with reaching(text, "checkpoint"), (fs.open(where, "rb") if fs is not None else open(where, "rb")) as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
                buffer.write(block)
    except (FileNotFoundError, IsADirectoryError):
        raise ModelError(f"checkpoint: no such file {text!r}") from None
    except OSError as exc:
        raise ModelError(f"checkpoint: cannot read {text!r}: {exc}") from None
    return buffer.getvalue(), digest.hexdigest()


RANDOM_INIT_SEED = 0
"""The torch seed under which ``random_init`` builds a model without a checkpoint."""


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of the weights a model computes with: every tensor of its state dict and every buffer
    (non-persistent ones too, such as the normalisation), as (name, dtype, shape, bytes) in name
    order. Equal hashes mean equal weights, whatever built them (a checkpoint, a seeded init, a
    ``module:factory``)."""
    tensors = {name: t for name, t in model.named_buffers()}
    tensors.update({name: t for name, t in model.state_dict().items() if isinstance(t, torch.Tensor)})
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}\x1f{t.dtype}\x1f{tuple(t.shape)}\x1f".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _factory(spec: str):
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:  # like `python -m`: user modules resolve from the working directory
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"model: cannot import module {module_name!r} of {spec!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ModelError(f"model: module {module_name!r} has no attribute {attr!r}") from None


def build_net(spec: str, num_classes: int | None, model_args: Mapping | None = None) -> nn.Module:
    """The bare network (no normalisation) for a name, ``timm:NAME`` or a ``module:factory`` path (a
    factory is called with ``model_args`` as keyword arguments, and ``num_classes`` when it takes one
    and they do not set it)."""
    if is_timm(spec):
        try:
            return build_timm(spec, num_classes)
        except ValueError as exc:
            raise ModelError(f"model: {exc}") from None
    if ":" in spec:
        factory = _factory(spec)
        kwargs = dict(model_args or {})
        if num_classes is not None and "num_classes" in inspect.signature(factory).parameters:
            kwargs.setdefault("num_classes", num_classes)
        try:
            net = factory(**kwargs)
        except TypeError as exc:
            if model_args and "argument" in str(exc):
                raise ModelError(f"model-args: {spec!r} does not take {sorted(model_args)}: {exc}") from None
            raise
        if not isinstance(net, nn.Module):
            raise ModelError(f"model: {spec!r} returned {type(net).__name__}, not a torch.nn.Module")
        return net
    if spec in ARCHS:
        return ARCHS[spec](num_classes or 10)
    import torchvision  # only for torchvision models: its import costs a second

    available = set(torchvision.models.list_models())
    if spec not in available:
        raise ModelError(
            f"model: unknown architecture {spec!r}; use a torchvision name (e.g. resnet50), one of "
            f"{sorted(ARCHS)}, timm:NAME, or a 'package.module:factory' path"
        )
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    return torchvision.models.get_model(spec, weights=None, **kwargs)


def default_normalization(spec: str) -> str:
    if is_timm(spec):
        return TIMM_NORMALIZATION
    if ":" in spec or spec == "small_cnn":
        return "none"
    return "cifar" if spec.startswith("cifar") else "imagenet"


def wrap(net: nn.Module, normalize: str) -> nn.Sequential:
    """Sequential(Normalize, net), the layout of the published checkpoints (identity if 'none'; the
    timm model's own mean and std if 'timm')."""
    if normalize == TIMM_NORMALIZATION:
        stats = timm_normalization(net)
    elif normalize not in NORMALIZATIONS:
        raise ModelError(f"normalize: must be one of {sorted(NORMALIZATIONS)} or {TIMM_NORMALIZATION!r} (timm "
                         f"models), got {normalize!r}")
    else:
        stats = NORMALIZATIONS[normalize]
    head = nn.Identity() if stats is None else Normalize(*stats)
    return nn.Sequential(head, net)


def read_checkpoint(path: str | Path, trust: bool = False, storage_options: dict | None = None) -> object:
    """torch.load with weights_only=True, unless the user trusts the file (``--trust-checkpoint``).
    ``path`` is a local path or any fsspec URL (``s3://bucket/model.pt``)."""
    return read_checkpoint_hashed(path, trust, storage_options)[0]


def read_checkpoint_hashed(path: str | Path, trust: bool = False,
                           storage_options: dict | None = None) -> tuple[object, str]:
    """The loaded checkpoint and the SHA-256 of its bytes, from one streaming read. A safetensors
    file (the Hugging Face hub's ``model.safetensors``) is read as the state dict it holds."""
    data, sha = _read_hashed(path, storage_options)
    path = str(path)
    if _is_safetensors(data):
        from safetensors.torch import load as load_safetensors

        try:
            return load_safetensors(data), sha
        except Exception as exc:  # noqa: BLE001 -- a corrupt file, whatever safetensors raises
            raise ModelError(f"checkpoint: cannot read {path!r} as safetensors: {exc}") from None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=not trust), sha
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):
            raise ModelError(f"checkpoint: cannot read {path!r}: not a torch checkpoint") from None
        raise ModelError(
            f"checkpoint: {path!r} needs arbitrary code to unpickle, which rscert refuses by default "
            f"(torch.load weights_only=True). If you trust the file, pass --trust-checkpoint "
            f"(trust_checkpoint: true). Detail: {str(exc).splitlines()[0]}"
        ) from None
    except Exception as exc:  # corrupt or not a torch file
        raise ModelError(f"checkpoint: cannot read {path!r}: {exc}") from None


def _is_safetensors(data: bytes) -> bool:
    """The safetensors layout: an 8-byte little-endian header length, then a JSON header."""
    if len(data) < 10:
        return False
    size = int.from_bytes(data[:8], "little")
    return 2 <= size <= len(data) - 8 and data[8:9] == b"{"


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def net_state_dict(raw: object) -> tuple[list[dict[str, torch.Tensor]], dict]:
    """Split a loaded checkpoint into (candidate state dicts of the bare net, metadata).

    Candidates, in order: the keys as stored; without a ``module.`` prefix (DataParallel); and
    the ``1.`` half of ``Sequential(Normalize, net)`` (the published layout), without ``module.``.
    A bare ``Sequential`` net also has ``1.`` keys, so the loader tries each candidate in turn.
    """
    meta: dict = {}
    state = raw
    if isinstance(raw, Mapping) and "state_dict" in raw:
        meta = {k: v for k, v in raw.items() if k != "state_dict"}
        state = raw["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError("checkpoint: expected a state dict (names -> tensors) or a dict with 'state_dict'")
    candidates = [dict(state), _strip(state, "module.")]
    if state and all(k.startswith(("0.", "1.")) for k in state):
        inner = {k[2:]: v for k, v in state.items() if k.startswith("1.")}
        candidates += [inner, _strip(inner, "module.")]
    unique = []
    for cand in candidates:
        if all(cand.keys() != u.keys() for u in unique):
            unique.append(cand)
    return unique, meta


def _load_first_fitting(net: nn.Module, candidates: list[dict[str, torch.Tensor]], label: str) -> None:
    expected = set(net.state_dict())
    errors = []
    for cand in candidates:
        try:
            net.load_state_dict(cand, strict=True)
            return
        except RuntimeError as exc:
            errors.append((len(expected & set(cand)), str(exc)))
    best = max(errors, key=lambda e: e[0])[1]  # the layout whose names fit best says what is wrong
    raise ModelError(f"checkpoint: does not fit {label}: {best}")


def _classes_in(state: Mapping[str, torch.Tensor]) -> int | None:
    for value in reversed(list(state.values())):
        if value.dim() == 2:
            return int(value.shape[0])
    return None


def load_model(
    spec: str | None = None,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    normalize: str = "auto",
    trust_checkpoint: bool = False,
    random_init: bool = False,
    storage_options: dict | None = None,
    model_args: Mapping | None = None,
    weights_from_factory: bool = False,
) -> LoadedModel:
    """Build the model to certify.

    ``spec`` is a torchvision name, one of rscert's architectures, ``timm:NAME`` (docs/denoised.md) or
    ``package.module:factory``;
    it may be omitted when the checkpoint records ``arch``. ``num_classes`` defaults to the
    checkpoint's (its ``num_classes`` field or its last linear layer), else the architecture's.

    Without a checkpoint the weights are whatever building makes, which for every architecture (and
    any ``module:factory``, which rscert cannot see into) may be a random network: refused unless
    ``random_init``, which builds under ``torch.manual_seed(RANDOM_INIT_SEED)`` (the global RNG state
    is restored afterwards), so every process builds the same network. ``weights_sha256`` fingerprints
    the weights actually built.
    """
    candidates, meta, sha = None, {}, None
    named = named_weights(spec) if spec and ":" in spec else None
    if named is not None:
        if checkpoint is not None:
            raise ModelError(f"checkpoint: --model {spec!r} names its weights; give one or the other")
        if not os.path.isfile(named.file):
            raise ModelError(
                f"model: the weights {named.enum}.{named.name} of {spec!r} are not in the local torch hub cache "
                f"({named.file}); rscert never downloads at run time: put the file there (fetch it once where "
                "there is network, or copy it; TORCH_HOME moves the cache)")
        checkpoint = named.file
        spec, meta = named.arch, {"num_classes": named.num_classes}
    if checkpoint is not None:
        raw, sha = read_checkpoint_hashed(checkpoint, trust_checkpoint, storage_options)
        candidates, checkpoint_meta = net_state_dict(raw)
        meta = {**checkpoint_meta, **{k: v for k, v in meta.items() if v is not None}}
    arch = spec or meta.get("arch")
    if not arch:
        raise ModelError("model: give an architecture (--model) or a checkpoint that records 'arch'")
    if spec and meta.get("arch") and meta["arch"] != spec:
        raise ModelError(f"model: --model {spec!r} but the checkpoint was saved for arch {meta['arch']!r}")
    if num_classes is None and candidates:
        num_classes = (meta.get("num_classes") or (timm_classes_in(arch, candidates[0]) if is_timm(arch) else None)
                       or _classes_in(candidates[0]))
    if normalize == "auto":
        normalize = meta.get("normalize") or default_normalization(arch)
    factory = ":" in arch and not is_timm(arch)
    if weights_from_factory and (not factory or candidates is not None or random_init):
        raise ModelError("weights-from-factory: only for a 'package.module:factory' model that loads its own "
                         "weights, without --checkpoint or --random-init")
    if model_args and not factory:
        raise ModelError(f"model-args: only a 'package.module:factory' model takes arguments, not {arch!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        net = build_net(arch, num_classes, model_args)  # first, so that a bad name is reported as such
    if candidates is None and not (random_init or weights_from_factory):
        hint = " A factory that loads trained weights itself: --weights-from-factory." if factory else ""
        raise ModelError(
            f"checkpoint: model {arch!r} has no weights without one; give --checkpoint (checkpoint: ...), "
            "or --random-init (random_init: true) to certify a seeded random network (tests and benchmarks)."
            + hint)
    if candidates is not None:
        _load_first_fitting(net, candidates, f"model {arch!r} with {num_classes} classes")
    model = wrap(net, normalize).eval()
    if named is not None:
        source = f"torchvision {named.enum}.{named.name}"
    elif candidates is not None:
        source = "checkpoint"
    else:
        source = "factory" if weights_from_factory else "random_init"
    return LoadedModel(
        model=model,
        spec=named.spec if named is not None else arch,
        weights=source,
        num_classes=num_classes,
        normalize=normalize,
        checkpoint=None if checkpoint is None else str(checkpoint),
        checkpoint_sha256=sha,
        weights_sha256=weights_sha256(model),
        input_size=timm_input_size(net) if is_timm(arch) else None,
    )


def save_checkpoint(
    path: str | Path, model: nn.Sequential, arch: str, num_classes: int, normalize: str, **extra: object
) -> None:
    """Write the published format: {"arch", "state_dict" of Sequential(Normalize, net), ...}."""
    payload = {"arch": arch, "num_classes": num_classes, "normalize": normalize, **extra}
    payload["state_dict"] = model.state_dict()
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
