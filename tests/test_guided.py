"""The guided-diffusion -> diffusers UNet2DModel converter, checked numerically against a functional
forward pass of a guided-diffusion UNet written from its description (ResBlocks with scale-shift
norm and avg-pool / nearest resampling, legacy-order multi-head attention, sinusoidal embeddings)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rscert.models.guided import GuidedConfig, convert_guided, convert_state_dict, split_qkv
from rscert.models.load import ModelError

CFG = GuidedConfig(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                   attention_resolutions=(8,), num_head_channels=16, learn_sigma=True)


def _guided_names(cfg: GuidedConfig) -> dict[str, tuple]:
    """Every tensor of a guided-diffusion UNet of ``cfg`` with its shape, following its create_model."""
    mc, temb = cfg.model_channels, 4 * cfg.model_channels
    names: dict[str, tuple] = {"time_embed.0.weight": (temb, mc), "time_embed.0.bias": (temb,),
                               "time_embed.2.weight": (temb, temb), "time_embed.2.bias": (temb,),
                               "input_blocks.0.0.weight": (mc, cfg.in_channels, 3, 3), "input_blocks.0.0.bias": (mc,)}

    def res(p: str, cin: int, cout: int) -> None:
        names.update({f"{p}.in_layers.0.weight": (cin,), f"{p}.in_layers.0.bias": (cin,),
                      f"{p}.in_layers.2.weight": (cout, cin, 3, 3), f"{p}.in_layers.2.bias": (cout,),
                      f"{p}.emb_layers.1.weight": (2 * cout, temb), f"{p}.emb_layers.1.bias": (2 * cout,),
                      f"{p}.out_layers.0.weight": (cout,), f"{p}.out_layers.0.bias": (cout,),
                      f"{p}.out_layers.3.weight": (cout, cout, 3, 3), f"{p}.out_layers.3.bias": (cout,)})
        if cin != cout:
            names.update({f"{p}.skip_connection.weight": (cout, cin, 1, 1), f"{p}.skip_connection.bias": (cout,)})

    def attn(p: str, c: int) -> None:
        names.update({f"{p}.norm.weight": (c,), f"{p}.norm.bias": (c,), f"{p}.qkv.weight": (3 * c, c, 1),
                      f"{p}.qkv.bias": (3 * c,), f"{p}.proj_out.weight": (c, c, 1), f"{p}.proj_out.bias": (c,)})

    levels, has_attn = len(cfg.channel_mult), cfg.attention_levels()
    ch, chans, k = mc, [mc], 1
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            res(f"input_blocks.{k}.0", ch, mult * mc)
            ch = mult * mc
            if has_attn[level]:
                attn(f"input_blocks.{k}.1", ch)
            chans.append(ch)
            k += 1
        if level != levels - 1:
            res(f"input_blocks.{k}.0", ch, ch)
            chans.append(ch)
            k += 1
    res("middle_block.0", ch, ch)
    attn("middle_block.1", ch)
    res("middle_block.2", ch, ch)
    k = 0
    for level in reversed(range(levels)):
        mult = cfg.channel_mult[level]
        for i in range(cfg.num_res_blocks + 1):
            res(f"output_blocks.{k}.0", ch + chans.pop(), mult * mc)
            ch = mult * mc
            if has_attn[level]:
                attn(f"output_blocks.{k}.1", ch)
            if level and i == cfg.num_res_blocks:
                res(f"output_blocks.{k}.{2 if has_attn[level] else 1}", ch, ch)
            k += 1
    out_ch = cfg.in_channels * (2 if cfg.learn_sigma else 1)
    names.update({"out.0.weight": (ch,), "out.0.bias": (ch,), "out.2.weight": (out_ch, mc, 3, 3),
                  "out.2.bias": (out_ch,)})
    return names


def _random_guided(cfg: GuidedConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in _guided_names(cfg).items():
        t = torch.randn(shape, generator=gen)
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        is_norm_scale = len(shape) == 1 and name.endswith("weight") and ("norm" in name or "layers.0" in name
                                                                         or name == "out.0.weight")
        state[name] = 1 + 0.1 * t if is_norm_scale else t / math.sqrt(fan_in) if len(shape) > 1 else 0.1 * t
    return state


# -- a functional guided-diffusion forward pass ---------------------------------------------------------------
def _gn(x, sd, p):
    return F.group_norm(x, 32, sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-5)


def _res(x, emb, sd, p, up=False, down=False):
    h = F.silu(_gn(x, sd, f"{p}.in_layers.0"))
    if up:
        h, x = F.interpolate(h, scale_factor=2, mode="nearest"), F.interpolate(x, scale_factor=2, mode="nearest")
    if down:
        h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
    h = F.conv2d(h, sd[f"{p}.in_layers.2.weight"], sd[f"{p}.in_layers.2.bias"], padding=1)
    scale, shift = F.linear(F.silu(emb), sd[f"{p}.emb_layers.1.weight"], sd[f"{p}.emb_layers.1.bias"]).chunk(2, dim=1)
    h = _gn(h, sd, f"{p}.out_layers.0") * (1 + scale[..., None, None]) + shift[..., None, None]
    h = F.conv2d(F.silu(h), sd[f"{p}.out_layers.3.weight"], sd[f"{p}.out_layers.3.bias"], padding=1)
    if f"{p}.skip_connection.weight" in sd:
        x = F.conv2d(x, sd[f"{p}.skip_connection.weight"], sd[f"{p}.skip_connection.bias"])
    return x + h


def _attn(x, sd, p, head_channels):
    """Legacy order: the qkv rows are split into heads first, then into q, k, v."""
    b, c, height, width = x.shape
    heads, length = c // head_channels, height * width
    qkv = F.conv1d(_gn(x, sd, f"{p}.norm").reshape(b, c, length), sd[f"{p}.qkv.weight"], sd[f"{p}.qkv.bias"])
    q, k, v = qkv.reshape(b * heads, 3 * head_channels, length).split(head_channels, dim=1)
    scale = 1 / math.sqrt(math.sqrt(head_channels))
    weights = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    a = torch.einsum("bts,bcs->bct", weights, v).reshape(b, c, length)
    h = F.conv1d(a, sd[f"{p}.proj_out.weight"], sd[f"{p}.proj_out.bias"])
    return (x.reshape(b, c, length) + h).reshape(b, c, height, width)


def _guided_forward(sd, cfg: GuidedConfig, x, t):
    half = cfg.model_channels // 2
    args = t[:, None].float() * torch.exp(-math.log(10_000) * torch.arange(half, dtype=torch.float32) / half)
    temb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    emb = F.linear(F.silu(F.linear(temb, sd["time_embed.0.weight"], sd["time_embed.0.bias"])),
                   sd["time_embed.2.weight"], sd["time_embed.2.bias"])
    h = F.conv2d(x, sd["input_blocks.0.0.weight"], sd["input_blocks.0.0.bias"], padding=1)
    hs, k, levels, has_attn = [h], 1, len(cfg.channel_mult), cfg.attention_levels()
    for level in range(levels):
        for _ in range(cfg.num_res_blocks):
            h = _res(h, emb, sd, f"input_blocks.{k}.0")
            if has_attn[level]:
                h = _attn(h, sd, f"input_blocks.{k}.1", cfg.num_head_channels)
            hs.append(h)
            k += 1
        if level != levels - 1:
            h = _res(h, emb, sd, f"input_blocks.{k}.0", down=True)
            hs.append(h)
            k += 1
    h = _res(h, emb, sd, "middle_block.0")
    h = _attn(h, sd, "middle_block.1", cfg.num_head_channels)
    h = _res(h, emb, sd, "middle_block.2")
    k = 0
    for level in reversed(range(levels)):
        for i in range(cfg.num_res_blocks + 1):
            h = _res(torch.cat([h, hs.pop()], dim=1), emb, sd, f"output_blocks.{k}.0")
            if has_attn[level]:
                h = _attn(h, sd, f"output_blocks.{k}.1", cfg.num_head_channels)
            if level and i == cfg.num_res_blocks:
                h = _res(h, emb, sd, f"output_blocks.{k}.{2 if has_attn[level] else 1}", up=True)
            k += 1
    return F.conv2d(F.silu(_gn(h, sd, "out.0")), sd["out.2.weight"], sd["out.2.bias"], padding=1)


# -- tests ----------------------------------------------------------------------------------------------------------
def test_converted_unet_computes_the_guided_function():
    from diffusers import UNet2DModel

    src = _random_guided(CFG)
    state, unused = convert_state_dict(src, CFG)
    assert unused == []
    unet = UNet2DModel(**CFG.unet_config()).eval()
    unet.load_state_dict(state, strict=True)  # every UNet2DModel tensor filled, none left over
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([17, 503])
    with torch.no_grad():
        expected = _guided_forward(src, CFG, x, t)
        got = unet(x, t).sample
    assert got.shape == expected.shape == (2, 6, 16, 16)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_split_qkv_is_the_legacy_order():
    heads, ch = 4, 3
    rows = torch.arange(3 * heads * ch).reshape(-1, 1, 1).float()  # row r holds r
    q, k, v = split_qkv(rows, heads)
    per = torch.arange(heads)[:, None] * 3 * ch + torch.arange(ch)[None, :]
    assert q.flatten().tolist() == per.flatten().tolist()
    assert k.flatten().tolist() == (per + ch).flatten().tolist()
    assert v.flatten().tolist() == (per + 2 * ch).flatten().tolist()


def test_imagenet_preset_config():
    cfg = GuidedConfig()
    unet_cfg = cfg.unet_config()
    assert cfg.attention_levels() == [False, False, False, True, True, True]
    assert unet_cfg["block_out_channels"] == [256, 256, 512, 512, 1024, 1024] and unet_cfg["out_channels"] == 6


def test_convert_guided_writes_a_loadable_folder(tmp_path, monkeypatch):
    from rscert.models import guided

    monkeypatch.setitem(guided.PRESETS, "tiny", CFG)
    src = _random_guided(CFG)
    torch.save(src, tmp_path / "model.pt")
    folder = convert_guided(str(tmp_path / "model.pt"), str(tmp_path / "converted"), preset="tiny")
    from rscert.models.denoisers import load_denoiser

    loaded = load_denoiser(f"diffusion:{folder}", sigma=0.25)
    assert loaded.detail["num_train_timesteps"] == 1000 and loaded.detail["prediction_type"] == "epsilon"
    with torch.no_grad():
        assert loaded.module(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)
    broken = dict(src)
    broken["extra.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "extra.pt")
    with pytest.raises(ModelError, match="does not use"):
        convert_guided(str(tmp_path / "extra.pt"), str(tmp_path / "x"), preset="tiny")
    del broken["extra.weight"], broken["out.2.bias"]
    torch.save(broken, tmp_path / "short.pt")
    with pytest.raises(ModelError, match="missing"):
        convert_guided(str(tmp_path / "short.pt"), str(tmp_path / "y"), preset="tiny")
