"""Convert an OpenAI guided-diffusion UNet checkpoint (Dhariwal & Nichol 2021; e.g. the ImageNet
256x256 unconditional model ``256x256_diffusion_uncond.pt`` that Carlini et al. 2023 denoise with)
into a diffusers ``UNet2DModel`` folder that ``--denoiser diffusion:FOLDER`` loads.

The two UNets compute the same function once the tensors are renamed; the correspondence (module by
module, read off guided-diffusion's ``unet.py``) is:

==============================================  =================================================
guided-diffusion                                diffusers UNet2DModel
==============================================  =================================================
``time_embed.0`` / ``time_embed.2``             ``time_embedding.linear_1`` / ``linear_2``
``input_blocks.0.0``                            ``conv_in``
``input_blocks.k.0`` (ResBlock)                 ``down_blocks.l.resnets.j``
``input_blocks.k.1`` (AttentionBlock)           ``down_blocks.l.attentions.j``
``input_blocks.k.0`` (ResBlock ``down=True``)   ``down_blocks.l.downsamplers.0`` (``downsample_type="resnet"``)
``middle_block.0`` / ``.1`` / ``.2``            ``mid_block.resnets.0`` / ``attentions.0`` / ``resnets.1``
``output_blocks.k.0`` / ``.1``                  ``up_blocks.l.resnets.j`` / ``attentions.j``
``output_blocks.k.-1`` (ResBlock ``up=True``)   ``up_blocks.l.upsamplers.0`` (``upsample_type="resnet"``)
``out.0`` / ``out.2``                           ``conv_norm_out`` / ``conv_out``
ResBlock ``in_layers.0`` / ``in_layers.2``      ``norm1`` / ``conv1``
ResBlock ``emb_layers.1``                       ``time_emb_proj`` (2C outputs: scale, then shift)
ResBlock ``out_layers.0`` / ``out_layers.3``    ``norm2`` / ``conv2``
ResBlock ``skip_connection``                    ``conv_shortcut``
Attention ``norm`` / ``proj_out``               ``group_norm`` / ``to_out.0`` (1x1 conv1d -> linear)
Attention ``qkv`` (conv1d, 3C outputs)          ``to_q``, ``to_k``, ``to_v``
==============================================  =================================================

The one trap is ``qkv``: guided-diffusion's default (legacy) attention splits heads *before* q/k/v,
so its 3C output rows are ordered (head, {q, k, v}, channel), not ({q, k, v}, head, channel);
:func:`split_qkv` undoes that. Both sides use 32-group GroupNorm (eps 1e-5), SiLU, sinusoidal
timestep embeddings with cosine first and frequencies exp(-ln(10^4) i / half), avg-pool / nearest
resampling inside the ResBlocks, scale-shift norm h * (1 + scale) + shift, and attention scaled by
1 / sqrt(head channels). (``attn_norm_num_groups`` must be set: under scale-shift norm,
diffusers' middle block otherwise drops its attention's GroupNorm.) A model that learns its variance
(``learn_sigma``) has 2C output channels, epsilon first; the one-shot denoiser keeps the first C.

The schedule of those models is DDPM's linear one over 1,000 steps (beta 1e-4 .. 0.02), written as a
DDPMScheduler config next to the UNet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from rscert.models.load import ModelError, read_checkpoint


@dataclass(frozen=True)
class GuidedConfig:
    """The architecture settings of a guided-diffusion UNet (its ``create_model`` arguments)."""

    image_size: int = 256
    model_channels: int = 256
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    num_head_channels: int = 64
    learn_sigma: bool = True
    in_channels: int = 3

    def attention_levels(self) -> list[bool]:
        """Whether level l (downsampling factor 2**l) has attention blocks."""
        return [self.image_size // 2**level in self.attention_resolutions for level in range(len(self.channel_mult))]

    def unet_config(self) -> dict:
        """The equivalent ``UNet2DModel`` configuration (resblock_updown and scale-shift norm)."""
        attn = self.attention_levels()
        return {
            "sample_size": self.image_size, "in_channels": self.in_channels,
            "out_channels": self.in_channels * (2 if self.learn_sigma else 1),
            "block_out_channels": [self.model_channels * m for m in self.channel_mult],
            "layers_per_block": self.num_res_blocks, "attention_head_dim": self.num_head_channels,
            "down_block_types": ["AttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in attn],
            "up_block_types": ["AttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(attn)],
            "downsample_type": "resnet", "upsample_type": "resnet", "resnet_time_scale_shift": "scale_shift",
            "norm_num_groups": 32, "attn_norm_num_groups": 32, "norm_eps": 1e-5, "flip_sin_to_cos": True,
            "freq_shift": 0,
        }


PRESETS = {"imagenet256-uncond": GuidedConfig()}
"""Known checkpoints: ``256x256_diffusion_uncond.pt`` of openai/guided-diffusion."""

SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001,
             "beta_end": 0.02, "beta_schedule": "linear", "prediction_type": "epsilon",
             "variance_type": "learned_range", "clip_sample": True}


def split_qkv(weight: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, k, v) of a legacy-order qkv weight [3C, C(, 1)] or bias [3C]: rows are (head, qkv, channel)."""
    rows = weight.shape[0]
    per_head = rows // (3 * heads)
    grouped = weight.reshape(heads, 3, per_head, *weight.shape[1:])
    q, k, v = (grouped[:, i].reshape(rows // 3, *weight.shape[1:]) for i in range(3))
    if q.dim() == 3:  # conv1d kernel of size 1 -> linear
        q, k, v = q[..., 0], k[..., 0], v[..., 0]
    return q, k, v


def _resblock(src: Mapping[str, torch.Tensor], old: str, new: str, out: dict, used: set) -> None:
    pairs = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
             "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
    for a, b in pairs.items():
        for leaf in ("weight", "bias"):
            if f"{old}.{a}.{leaf}" in src:
                out[f"{new}.{b}.{leaf}"] = src[f"{old}.{a}.{leaf}"]
                used.add(f"{old}.{a}.{leaf}")


def _attention(src: Mapping[str, torch.Tensor], old: str, new: str, out: dict, used: set,
               head_channels: int) -> None:
    channels = src[f"{old}.norm.weight"].shape[0]
    heads = channels // head_channels
    out[f"{new}.group_norm.weight"] = src[f"{old}.norm.weight"]
    out[f"{new}.group_norm.bias"] = src[f"{old}.norm.bias"]
    for leaf in ("weight", "bias"):
        q, k, v = split_qkv(src[f"{old}.qkv.{leaf}"], heads)
        out[f"{new}.to_q.{leaf}"], out[f"{new}.to_k.{leaf}"], out[f"{new}.to_v.{leaf}"] = q, k, v
        proj = src[f"{old}.proj_out.{leaf}"]
        out[f"{new}.to_out.0.{leaf}"] = proj[..., 0] if proj.dim() == 3 else proj
    used.update(f"{old}.{a}.{leaf}" for a in ("norm", "qkv", "proj_out") for leaf in ("weight", "bias"))


def convert_state_dict(src: Mapping[str, torch.Tensor], cfg: GuidedConfig
                       ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A guided-diffusion UNet state dict renamed to UNet2DModel's (see the module docstring's table),
    and the source names left unused (empty for a checkpoint that matches ``cfg``). A name the
    configuration needs and the checkpoint lacks raises KeyError."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for old, new in (("time_embed.0", "time_embedding.linear_1"), ("time_embed.2", "time_embedding.linear_2"),
                     ("input_blocks.0.0", "conv_in"), ("out.0", "conv_norm_out"), ("out.2", "conv_out")):
        for leaf in ("weight", "bias"):
            out[f"{new}.{leaf}"] = src[f"{old}.{leaf}"]
            used.add(f"{old}.{leaf}")
    attn, levels, k = cfg.attention_levels(), len(cfg.channel_mult), 1
    for level in range(levels):
        for j in range(cfg.num_res_blocks):
            _resblock(src, f"input_blocks.{k}.0", f"down_blocks.{level}.resnets.{j}", out, used)
            if attn[level]:
                _attention(src, f"input_blocks.{k}.1", f"down_blocks.{level}.attentions.{j}", out, used,
                           cfg.num_head_channels)
            k += 1
        if level != levels - 1:
            _resblock(src, f"input_blocks.{k}.0", f"down_blocks.{level}.downsamplers.0", out, used)
            k += 1
    _resblock(src, "middle_block.0", "mid_block.resnets.0", out, used)
    _attention(src, "middle_block.1", "mid_block.attentions.0", out, used,
                           cfg.num_head_channels)
    _resblock(src, "middle_block.2", "mid_block.resnets.1", out, used)
    k = 0
    for i, level in enumerate(reversed(range(levels))):
        for j in range(cfg.num_res_blocks + 1):
            _resblock(src, f"output_blocks.{k}.0", f"up_blocks.{i}.resnets.{j}", out, used)
            if attn[level]:
                _attention(src, f"output_blocks.{k}.1", f"up_blocks.{i}.attentions.{j}", out, used,
                           cfg.num_head_channels)
            if level and j == cfg.num_res_blocks:
                _resblock(src, f"output_blocks.{k}.{2 if attn[level] else 1}", f"up_blocks.{i}.upsamplers.0", out, used)
            k += 1
    return out, sorted(set(src) - used)


def convert_guided(checkpoint: str, out: str, preset: str = "imagenet256-uncond") -> Path:
    """Write ``OUT/unet`` (UNet2DModel, safetensors) and ``OUT/scheduler`` from a guided-diffusion
    checkpoint; every tensor of the checkpoint must be used and every UNet2DModel tensor filled."""
    from diffusers import DDPMScheduler, UNet2DModel

    if preset not in PRESETS:
        raise ModelError(f"convert: unknown preset {preset!r}; known: {sorted(PRESETS)}")
    cfg = PRESETS[preset]
    src = read_checkpoint(checkpoint)
    if not isinstance(src, Mapping) or not all(isinstance(v, torch.Tensor) for v in src.values()):
        raise ModelError(f"convert: {checkpoint!r} is not a state dict of tensors")
    try:
        state, unused = convert_state_dict(src, cfg)
    except KeyError as exc:
        raise ModelError(f"convert: {checkpoint!r} is not a guided-diffusion UNet of preset {preset!r} "
                         f"(missing {exc})") from None
    if unused:
        raise ModelError(f"convert: {checkpoint!r} has tensors preset {preset!r} does not use: {unused[:3]}")
    unet = UNet2DModel(**cfg.unet_config())
    try:
        unet.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"convert: {checkpoint!r} does not fit preset {preset!r}: {str(exc)[:300]}") from None
    root = Path(out)
    unet.save_pretrained(root / "unet")
    DDPMScheduler.from_config(SCHEDULER).save_pretrained(root / "scheduler")
    return root
