"""Soundness of the sampler's noise: reduced precision certifies x (via f∘cast), and draws never repeat.

Both tests call the sampler positionally, as the CERTIFY code does, so that they run unchanged
against older samplers (both failed on the sampler that drew noise in the forward dtype from
32-bit-seeded chunks).
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from rscert.sampling.sampler import Sampler, SamplerOptions
from rscert.stats.smoothing import certify_from_counts

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Linear64(nn.Module):
    """f(z) = class 0 iff w.z + b > 0, computed in float64 from whatever dtype z arrives in."""

    def __init__(self, w: np.ndarray, b: float) -> None:
        super().__init__()
        self.register_buffer("w", torch.from_numpy(w))
        self.b = b

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        v = (z.flatten(1).double() * self.w).sum(dim=1) + self.b  # elementwise: autocast leaves it alone
        return torch.stack([v, -v], dim=1)


def _pixel_image(shape=(3, 64, 64), seed=0) -> torch.Tensor:
    """An image of 8-bit pixel values k/255, as decoded from a PNG or JPEG, in float32."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy((rng.integers(0, 256, size=shape) / 255).astype(np.float32))


def _cast_error(z: torch.Tensor, precision: str) -> torch.Tensor:
    return z.to(DTYPES[precision]).double() - z.double()


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_reduced_precision_certifies_the_class_of_x_within_its_margin(precision, device):
    """A linear boundary between x and cast(x): the certificate must be about x.

    With noise drawn and added in float32 and the cast as f's first step, the certified classifier is
    the smoothing of f∘cast at x. f∘cast(z) = class 0 iff w.z + b + d(z) > 0 with d(z) = w.(cast(z) - z)
    the rounding term, so its robust radius around x is the margin up to max |d| (measured below with
    independent numpy noise). The old sampler cast x itself (w.(cast(x) - x) = -|cast(x) - x|) and
    certified the other class.
    """
    x = _pixel_image()
    err = _cast_error(x, "bf16" if precision == "fp32" else precision).numpy().ravel()
    w = -err / np.linalg.norm(err)  # unit normal pointing from cast(x) to x
    margin = 0.5 * np.linalg.norm(err)  # bf16: ~0.048, fp16: ~0.006
    b = margin - float(w @ x.double().numpy().ravel())
    if precision != "fp32":
        assert float(w @ x.to(DTYPES[precision]).double().numpy().ravel()) + b < 0  # cast(x) on the other side
    sigma = margin / 0.4  # P[class 0] = Phi(0.4) = 0.66 at x

    rng = np.random.default_rng(1)
    z = x.numpy().ravel() + sigma * rng.standard_normal((500, x.numel())).astype(np.float32)
    d = np.abs(_cast_error(torch.from_numpy(z), precision).numpy() @ w)
    slack = 2 * d.max()
    assert slack < 0.25 * margin  # the rounding term is small: the check below has teeth

    model = Linear64(w, b)
    sampler = Sampler(model, SamplerOptions(batch_size=500, precision=precision), device=device)
    for seed in (0, 1):
        sel = sampler.counts(x[None], ["0"], sigma, 100, seed, "selection")
        est = sampler.counts(x[None], ["0"], sigma, 1000, seed, "estimation")
        cert = certify_from_counts(sel, est, 1000, 0.001, sigma)
        assert cert.prediction[0] == 0, (precision, seed, cert)  # the side of the boundary where x lies
        assert 0 < cert.radius[0] <= margin + slack, (precision, seed, cert.radius[0], margin)


class Recorder(nn.Module):
    """Votes class 0 and keeps the float32 bytes of every noisy input it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[bytes] = []

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        flat = z.detach().float().flatten(1).contiguous().cpu().numpy()
        self.rows.extend(row.tobytes() for row in flat)
        return torch.zeros(z.shape[0], 2, device=z.device)


def test_no_noisy_input_repeats_over_selection_and_estimation(device):
    """100 selection + 100,000 estimation draws of one input: 100,100 distinct noisy inputs.

    Id "5059" at seed 0 is one where two 100-draw chunks of the old generator (chunk seeds equal in
    their low 32 bits, all that torch's CPU generator kept) repeated whole.
    """
    recorder = Recorder()
    sampler = Sampler(recorder, SamplerOptions(batch_size=1000), device=device, num_classes=2)
    x = torch.full((1, 1, 2, 2), 0.5)
    sampler.counts(x, ["5059"], 0.25, 100, 0, "selection")
    sampler.counts(x, ["5059"], 0.25, 100_000, 0, "estimation")
    assert len(recorder.rows) == 100_100
    assert len(set(recorder.rows)) == 100_100


def test_two_inputs_with_equal_pixels_but_different_ids_see_different_noise(device):
    """Two copies of one image (two shards' equal __key__s get different dataset indices as ids)."""
    recorder = Recorder()
    sampler = Sampler(recorder, SamplerOptions(batch_size=256), device=device, num_classes=2)
    x = torch.full((2, 1, 2, 2), 0.5)
    sampler.counts(x, ["17", "4711"], 0.25, 5000, 0, "estimation")
    first, second = set(recorder.rows[:5000]), set(recorder.rows[5000:])
    assert len(first) == len(second) == 5000
    assert not first & second
    # and the stream of each id is reproducible alone
    alone = Recorder()
    Sampler(alone, SamplerOptions(batch_size=999), device=device, num_classes=2).counts(
        x[1:], ["4711"], 0.25, 5000, 0, "estimation")
    assert alone.rows == recorder.rows[5000:]
    assert math.isclose(np.frombuffer(b"".join(alone.rows), np.float32).std(), 0.25, rel_tol=0.05)
