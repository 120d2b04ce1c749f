"""Denoisers: the published denoised-smoothing checkpoint format, factories, the one-shot diffusion
denoiser (timestep and x_t scaling against closed forms), and the composition f∘d under the sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from rscert.models.denoiser_archs import DnCNN, MemNet, denoiser_from_state, dncnn, memnet
from rscert.models.denoisers import Denoised, denoiser_kind, load_denoiser, save_denoiser
from rscert.models.diffusion import OneShotDenoiser, noise_ratios, timestep_for_sigma
from rscert.models.load import ModelError, weights_sha256
from rscert.sampling.sampler import Sampler, SamplerOptions
from tests.zoo import tiny_cnn


def _randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial weights and BN statistics (a fresh DnCNN is the identity: its last layer is zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.dtype.is_floating_point:
                t.copy_(torch.rand(t.shape, generator=gen) * 0.2 + (0.9 if "running_var" in name else -0.1))
    return net.eval()


# -- the published checkpoint format ------------------------------------------------------------------
@pytest.mark.parametrize(("arch", "build", "parallel"), [
    ("cifar_dncnn", lambda: DnCNN(3, 64, 17), False),
    ("cifar_dncnn_wide", lambda: DnCNN(3, 128, 17), False),
    ("imagenet_dncnn", lambda: DnCNN(3, 64, 17), True),
    ("memnet", lambda: MemNet(3, 64, 3, 6), False),
    ("imagenet_memnet", lambda: MemNet(3, 64, 3, 6), True),
])
def test_published_checkpoint_loads(tmp_path, arch, build, parallel):
    net = _randomize(build())
    state = (nn.DataParallel(net) if parallel else net).state_dict()  # DataParallel: module. prefixes
    assert all(k.startswith("module.") for k in state) == parallel
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 90, "arch": arch, "state_dict": state, "optimizer": {"lr": 1e-3}}, path)
    loaded = load_denoiser(str(path), sigma=0.25)
    assert loaded.kind == "checkpoint" and loaded.arch == arch
    assert loaded.weights_sha256 == weights_sha256(net)
    x = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), net(x))
    assert not loaded.module.training


def _bn(prefix: str, width: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (width,), f"{prefix}.bias": (width,), f"{prefix}.running_mean": (width,),
            f"{prefix}.running_var": (width,), f"{prefix}.num_batches_tracked": ()}


def _published_names(arch: str) -> dict[str, tuple]:
    """Names and shapes of the published networks' state dicts, written out from their description
    (DnCNN: conv+ReLU, 15 x conv+BN+ReLU, conv, in one ``dncnn`` Sequential; MemNet: BN-ReLU-conv
    units named bn/relu/conv), independently of rscert's classes."""
    if "dncnn" in arch:
        w = 128 if arch.endswith("wide") else 64
        names = {"dncnn.0.weight": (w, 3, 3, 3), "dncnn.0.bias": (w,), "dncnn.47.weight": (3, w, 3, 3)}
        for i in range(15):
            names[f"dncnn.{2 + 3 * i}.weight"] = (w, w, 3, 3)
            names.update(_bn(f"dncnn.{3 + 3 * i}", w))
        return names
    names = {**_bn("feature_extractor.bn", 3), "feature_extractor.conv.weight": (64, 3, 3, 3),
             **_bn("reconstructor.bn", 64), "reconstructor.conv.weight": (3, 64, 3, 3)}
    for m in range(3):
        for r in range(6):
            for half in ("relu_conv1", "relu_conv2"):
                prefix = f"dense_memory.{m}.recursive_unit.{r}.{half}"
                names.update(_bn(f"{prefix}.bn", 64))
                names[f"{prefix}.conv.weight"] = (64, 64, 3, 3)
        names.update(_bn(f"dense_memory.{m}.gate_unit.bn", (6 + m + 1) * 64))
        names[f"dense_memory.{m}.gate_unit.conv.weight"] = (64, (6 + m + 1) * 64, 1, 1)
    return names


@pytest.mark.parametrize("arch", ["cifar_dncnn", "cifar_dncnn_wide", "imagenet_dncnn", "memnet", "imagenet_memnet"])
def test_published_names_and_shapes_load(tmp_path, arch):
    """A state dict written from the published layout alone (random tensors) loads, every tensor used."""
    gen = torch.Generator().manual_seed(1)
    prefix = "module." if arch.startswith("imagenet") else ""
    state = {}
    for name, shape in _published_names(arch).items():
        if name.endswith("num_batches_tracked"):
            state[prefix + name] = torch.tensor(7)
        elif name.endswith("running_var"):
            state[prefix + name] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[prefix + name] = torch.randn(shape, generator=gen) * 0.05
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 1, "arch": arch, "state_dict": state}, path)
    module = load_denoiser(str(path), sigma=0.25).module
    mine = module.state_dict()
    assert set(mine) == set(_published_names(arch))
    assert all(torch.equal(mine[k], state[prefix + k]) for k in mine)
    with torch.no_grad():
        assert torch.isfinite(module(torch.rand(1, 3, 8, 8))).all()


def test_architecture_read_off_the_state_dict(tmp_path):
    net = _randomize(DnCNN(channels=1, width=8, depth=5))
    path = tmp_path / "d.pt"
    save_denoiser(path, net, "dncnn", channels=1)
    loaded = load_denoiser(str(path), sigma=0.5)
    assert (loaded.module.channels, loaded.module.width, loaded.module.depth) == (1, 8, 5)
    small = _randomize(MemNet(channels=1, width=8, memblocks=2, resblocks=3))
    rebuilt = denoiser_from_state("memnet", small.state_dict())
    assert (rebuilt.channels, rebuilt.width, rebuilt.memblocks, rebuilt.resblocks) == (1, 8, 2, 3)


def test_residual_forms():
    """DnCNN returns x - net(x), MemNet x + net(x); a fresh DnCNN (zero last layer) is the identity."""
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(dncnn(3).eval()(x), x)
        d = _randomize(DnCNN(3, 8, 4))
        assert torch.allclose(d(x), x - d.dncnn(x))
        m = _randomize(memnet(3))
        assert not torch.allclose(m(x), x)


def test_bad_checkpoints_are_refused(tmp_path):
    no_arch = tmp_path / "plain.pt"
    torch.save(_randomize(DnCNN(3, 8, 4)).state_dict(), no_arch)
    with pytest.raises(ModelError, match="records no 'arch'"):
        load_denoiser(str(no_arch), sigma=0.25)
    unknown = tmp_path / "unknown.pt"
    torch.save({"arch": "unet9000", "state_dict": DnCNN(3, 8, 4).state_dict()}, unknown)
    with pytest.raises(ModelError, match="unknown denoiser architecture"):
        load_denoiser(str(unknown), sigma=0.25)
    wrong = tmp_path / "wrong.pt"
    torch.save({"arch": "memnet", "state_dict": DnCNN(3, 8, 4).state_dict()}, wrong)
    with pytest.raises(ModelError, match="not a MemNet"):
        load_denoiser(str(wrong), sigma=0.25)
    pickled = tmp_path / "code.pt"
    torch.save({"arch": "cifar_dncnn", "state_dict": DnCNN(3, 8, 4).state_dict(), "extra": _Opaque()}, pickled)
    with pytest.raises(ModelError, match="--trust-checkpoint"):
        load_denoiser(str(pickled), sigma=0.25)
    assert load_denoiser(str(pickled), sigma=0.25, trust_checkpoint=True).arch == "cifar_dncnn"
    with pytest.raises(ModelError, match="no such file"):
        load_denoiser(str(tmp_path / "missing.pt"), sigma=0.25)


class _Opaque:
    """An object that only unpickles with arbitrary code (weights_only=False)."""


def test_spec_forms(tmp_path):
    assert denoiser_kind("tests.zoo:identity_denoiser") == "factory"
    assert denoiser_kind("s3://bucket/dncnn.pth.tar") == "checkpoint"
    assert denoiser_kind(f"diffusion:{tmp_path}") == "diffusion"
    assert denoiser_kind(str(tmp_path)) == "diffusion"
    with pytest.raises(ModelError, match="neither a checkpoint"):
        denoiser_kind("not a spec")
    blur = load_denoiser("tests.zoo:blur_denoiser", sigma=0.5)  # the factory is given sigma
    assert blur.kind == "factory" and blur.checkpoint_sha256 is None
    assert blur.weights_sha256 != load_denoiser("tests.zoo:blur_denoiser", sigma=0.25).weights_sha256
    with pytest.raises(ModelError, match="cannot import"):
        load_denoiser("tests.nonexistent_module:factory", sigma=0.5)


# -- the one-shot diffusion denoiser --------------------------------------------------------------------
def _linear_abar(steps: int, start: float, end: float) -> np.ndarray:
    return np.cumprod(1.0 - np.linspace(start, end, steps, dtype=np.float64))


def _cosine_abar(steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal (2021), eq. 17, discretised as betas clipped at max_beta."""
    f = [math.cos((t / steps + s) / (1 + s) * math.pi / 2) ** 2 for t in range(steps + 1)]
    betas = np.minimum([1 - f[t + 1] / f[t] for t in range(steps)], max_beta)
    return np.cumprod(1.0 - betas)


def _save_diffusion(folder, schedule: str, steps: int = 1000, prediction: str = "epsilon",
                    out_channels: int = 3, pipeline_layout: bool = True):
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=out_channels, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=4)
    scheduler = DDPMScheduler(num_train_timesteps=steps, beta_schedule=schedule, prediction_type=prediction)
    unet.save_pretrained(folder / "unet" if pipeline_layout else folder)
    scheduler.save_pretrained(folder / "scheduler" if pipeline_layout else folder)
    return unet.eval()


@pytest.mark.parametrize(("schedule", "closed_form"), [
    ("linear", lambda: _linear_abar(1000, 1e-4, 0.02)),
    ("squaredcos_cap_v2", lambda: _cosine_abar(1000)),
])
def test_timestep_and_scaling_closed_form(tmp_path, schedule, closed_form):
    """t* = first t with sqrt((1 - abar_t) / abar_t) >= 2 sigma; the UNet sees sqrt(abar_t*) (2x - 1) at
    t*; the output is (clip((x_t - sqrt(1 - abar) eps) / sqrt(abar)) + 1) / 2 of its epsilon."""
    abar = closed_form()
    ratios = np.sqrt((1 - abar) / abar)
    unet = _save_diffusion(tmp_path, schedule)
    for sigma in (0.12, 0.25, 0.5, 1.0):
        expected_t = int(np.argmax(ratios >= 2 * sigma))
        assert ratios[expected_t] >= 2 * sigma and (expected_t == 0 or ratios[expected_t - 1] < 2 * sigma)
        loaded = load_denoiser(f"diffusion:{tmp_path}", sigma=sigma)
        d = loaded.module
        assert loaded.kind == "diffusion" and loaded.detail["timestep"] == expected_t == d.t
        assert d.sqrt_abar == pytest.approx(math.sqrt(abar[expected_t]), rel=1e-5)
        seen: dict = {}
        hook = d.unet.register_forward_hook(lambda m, args, out, seen=seen: seen.update(x=args[0], t=args[1],
                                                                                    eps=out.sample))
        x = torch.rand(3, 3, 8, 8)
        with torch.no_grad():
            y = d(x)
        hook.remove()
        a = math.sqrt(abar[expected_t])
        assert torch.allclose(seen["x"], a * (2 * x - 1), atol=1e-6)
        assert seen["t"].tolist() == [expected_t] * 3
        x0 = (seen["x"] - math.sqrt(1 - abar[expected_t]) * seen["eps"]) / a
        assert torch.allclose(y, (x0.clamp(-1, 1) + 1) / 2, atol=1e-5)
        with torch.no_grad():
            assert torch.allclose(unet(seen["x"], seen["t"]).sample, seen["eps"])  # the saved UNet, reloaded


def test_timestep_helpers():
    abar = _linear_abar(1000, 1e-4, 0.02)
    assert np.allclose(noise_ratios(abar), np.sqrt((1 - abar) / abar))
    assert timestep_for_sigma(abar, 1e-6) == 0
    with pytest.raises(ModelError, match="beyond the diffusion schedule"):
        timestep_for_sigma(abar, 1e4)


@pytest.mark.parametrize("prediction", ["sample", "v_prediction"])
def test_other_prediction_types_and_learned_variance(tmp_path, prediction):
    _save_diffusion(tmp_path, "linear", steps=100, prediction=prediction, out_channels=6, pipeline_layout=False)
    d = load_denoiser(str(tmp_path), sigma=0.25, output_size=(12, 12)).module
    seen = {}
    d.unet.register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out.sample))
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        y = d(x)
    out = seen["out"][:, :3]  # the learned variance's channels are dropped
    a, b = d.sqrt_abar, d.sqrt_one_minus_abar
    x0 = out if prediction == "sample" else a * seen["x"] - b * out
    expected = torch.nn.functional.interpolate((x0.clamp(-1, 1) + 1) / 2, size=(12, 12), mode="bicubic",
                                               antialias=True)
    assert y.shape == (2, 3, 12, 12) and torch.allclose(y, expected, atol=1e-5)


def test_diffusion_folder_errors(tmp_path):
    with pytest.raises(ModelError, match="no such diffusion folder"):
        load_denoiser(f"diffusion:{tmp_path / 'nothing'}", sigma=0.25)
    _save_diffusion(tmp_path, "linear", pipeline_layout=True)
    (tmp_path / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(ModelError, match="no scheduler config"):
        load_denoiser(f"diffusion:{tmp_path}", sigma=0.25)


def test_diffusion_hash_covers_weights_schedule_and_timestep(tmp_path):
    _save_diffusion(tmp_path / "a", "linear")
    _save_diffusion(tmp_path / "b", "squaredcos_cap_v2")
    a25 = load_denoiser(f"diffusion:{tmp_path / 'a'}", sigma=0.25)
    assert a25.weights_sha256 == load_denoiser(f"diffusion:{tmp_path / 'a'}", sigma=0.25).weights_sha256
    assert a25.weights_sha256 != load_denoiser(f"diffusion:{tmp_path / 'a'}", sigma=0.5).weights_sha256
    assert a25.weights_sha256 != load_denoiser(f"diffusion:{tmp_path / 'b'}", sigma=0.25).weights_sha256
    assert a25.checkpoint_sha256 != load_denoiser(f"diffusion:{tmp_path / 'b'}", sigma=0.25).checkpoint_sha256


def test_one_shot_denoiser_refuses_unknown_prediction_type():
    with pytest.raises(ModelError, match="prediction type"):
        OneShotDenoiser(nn.Identity(), torch.tensor([0.9, 0.5]), 0.1, prediction_type="score")


# -- f∘d under the sampler --------------------------------------------------------------------------------
def test_constant_denoiser_gives_a_constant_smoothed_classifier():
    """Every noisy sample of every input maps to one image: every vote goes to f of that image."""
    classifier = tiny_cnn(num_classes=4)
    constant = load_denoiser("tests.zoo:constant_denoiser", sigma=0.5).module
    sampler = Sampler(Denoised(constant, classifier), SamplerOptions(batch_size=64), device="cpu")
    inputs = torch.rand(5, 3, 8, 8)
    inputs[0] = 0.0
    inputs[1] = 1.0
    votes = sampler.counts(inputs, [str(i) for i in range(5)], 0.5, 300, seed=3, phase="estimation")
    with torch.no_grad():
        target = int(classifier(constant(inputs[:1])).argmax(1))
    assert (votes[:, target] == 300).all() and votes.sum() == 5 * 300


class _Recorder(nn.Module):
    """The identity, recording the batch size of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        self.sizes.append(int(x.shape[0]))
        return x


@pytest.mark.parametrize("n", [10, 1000, 20_000])
def test_denoiser_memory_is_one_batch_whatever_n(n):
    """The denoiser sees at most one forward batch at a time, whatever n: samples stream through
    the sampler's one buffer, never materialised n at a time."""
    recorder = _Recorder()
    sampler = Sampler(Denoised(recorder, tiny_cnn(num_classes=3)), SamplerOptions(batch_size=256), device="cpu",
                      num_classes=3)
    votes = sampler.counts(torch.rand(3, 3, 4, 4), ["0", "1", "2"], 0.25, n, seed=0, phase="estimation")
    assert votes.sum() == 3 * n
    assert max(recorder.sizes) <= 256 and sum(recorder.sizes) == 3 * n
    assert len(recorder.sizes) == math.ceil(3 * n / 256)


def test_identity_denoiser_gives_the_same_votes():
    classifier = tiny_cnn(num_classes=4)
    identity = load_denoiser("tests.zoo:identity_denoiser", sigma=0.25).module
    x = torch.rand(4, 3, 8, 8)
    ids = ["a", "b", "c", "d"]
    plain = Sampler(classifier, SamplerOptions(batch_size=100), device="cpu").counts(x, ids, 0.25, 500, 1, "estimation")
    behind = Sampler(Denoised(identity, classifier), SamplerOptions(batch_size=100), device="cpu")
    assert np.array_equal(behind.counts(x, ids, 0.25, 500, 1, "estimation"), plain)
