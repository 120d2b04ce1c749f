"""The noise generator on every device of conftest.DEVICES (cpu, and cuda where there is one): the same
Philox words as the reference, the CPU's normals up to an ulp of ln/sqrt/cos/sin (and the other families'
draws), independence from the tiling, and the compiled generator (pipeline/sampling/noise_compiled.py)
equal to the eager one bit for bit.

The CPU references use the torch rounds (not the numba kernel: the same words, tests/test_noise_cpu.py),
so that this file runs where numba is not installed, as on a GPU machine."""

import math

import numpy as np
import pytest
import torch

from rscert.sampling import discrete_noise as dn
from rscert.sampling import noise, noise_compiled
from rscert.sampling.noise import draw, normal, philox4x32, stream
from rscert.sampling.sampler import Sampler, SamplerOptions
from rscert.stats import discrete_gaussian as dg

from .test_noise import KAT, reference_philox


@pytest.fixture(autouse=True)
def torch_rounds_on_cpu(monkeypatch):
    monkeypatch.setattr(noise, "_CPU_KERNEL_MIN", 1 << 62)


@pytest.mark.parametrize(("counter", "key", "expected"), KAT)
def test_device_words_match_the_known_answers(counter, key, expected, device):
    words = philox4x32(*(torch.tensor([c], dtype=torch.int64, device=device) for c in counter), *key)
    assert tuple(int(w.cpu()[0]) for w in words) == expected


def test_device_words_match_the_reference_on_random_counters(device):
    rng = np.random.default_rng(0)
    counters = rng.integers(0, 2**32, size=(4, 256), dtype=np.int64)
    key = (0xFFFFFFFF, 0x80000001)  # near 2^32: where a signed product would overflow
    words = philox4x32(*(torch.from_numpy(c).to(device) for c in counters), *key)
    words = [w.cpu() for w in words]
    for i in range(256):
        assert tuple(int(w[i]) for w in words) == reference_philox(tuple(int(c[i]) for c in counters), key)


@pytest.mark.parametrize(("shape", "count", "start"),
                         [((3, 32, 32), 40, 0), ((7,), 9, 2**32 - 9), ((3, 224, 224), 3, 17)])
def test_device_normals_equal_the_cpu_normals_up_to_an_ulp(shape, count, start, device):
    """u1 and θ are exact float32 steps on every device; ln, sqrt, cos and sin are the device's own."""
    key = stream(3, "img-7", "estimation")
    here = normal(key, start, count, shape, device=device).cpu()
    cpu = normal(key, start, count, shape, device="cpu")
    np.testing.assert_allclose(here.numpy(), cpu.numpy(), rtol=5e-7, atol=2e-7)


@pytest.mark.parametrize("name", ["laplace", "uniform"])
def test_device_family_draws_equal_the_cpu_draws(name, device):
    """The other families from the same Philox blocks: uniform by exact steps (the same bits), Laplace
    through ln (an ulp or two)."""
    key = stream(4, "fam", "estimation")
    here = draw(key, 77, 20, (3, 17, 9), name, device=device).cpu()
    cpu = draw(key, 77, 20, (3, 17, 9), name, device="cpu")
    if name == "uniform":
        assert torch.equal(here, cpu)
    else:
        np.testing.assert_allclose(here.numpy(), cpu.numpy(), rtol=5e-7, atol=2e-7)


@pytest.mark.parametrize("bits", [16, 63])
def test_device_discrete_atoms_equal_the_cpu_atoms(bits, device):
    """The discrete Gaussian on the device (torch rounds, searchsorted, then exact resolution of the flagged
    rows) gives the CPU's torch path's atoms, and the noisy lattice inputs, bit for bit."""
    tab = dg.table(0.25, bits)
    key = stream(2, "disc", "estimation")
    here = dn.atoms(key, 11, 9, (3, 5, 7), tab, device=device).cpu()
    cpu = torch.empty((9, 3, 5, 7), dtype=torch.int32)
    flags = torch.zeros(9, dtype=torch.bool)
    dn._atoms_torch(cpu.view(9, -1), flags, key, 11, tab)  # the torch path on CPU (no numba needed)
    dn.resolve_rows_(cpu, key, 11, torch.nonzero(flags).flatten().tolist(), tab)
    assert torch.equal(here, cpu)
    levels = torch.randint(0, 256, (3, 5, 7), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    noisy = torch.empty((9, 3, 5, 7), device=device)
    dn.noisy_(noisy, levels.to(device), key, 11, tab)
    want = torch.empty((9, 3, 5, 7))
    dn._noisy_torch(want, levels, key, 11, tab)
    unflagged = ~flags  # flagged rows hold candidates until resolved, on every path alike
    assert torch.equal(noisy.cpu()[unflagged], want[unflagged])


def test_device_draws_do_not_depend_on_range_or_tiling(monkeypatch, device):
    key = stream(0, "x", "selection")
    whole = normal(key, 0, 12, (3, 5, 7), device=device)
    assert torch.equal(torch.cat([normal(key, 0, 5, (3, 5, 7), device=device),
                                  normal(key, 5, 7, (3, 5, 7), device=device)]), whole)
    assert torch.equal(normal(key, 9, 1, (3, 5, 7), device=device)[0], whole[9])
    kind = torch.device(device).type
    for tile in (1, 7, 64, 1 << 20):  # tiles cut across blocks and draws in every way
        monkeypatch.setitem(noise._TILE_BLOCKS, kind, tile)
        assert torch.equal(normal(key, 0, 12, (3, 5, 7), device=device), whole)


def _shapes(device):
    small = [((3, 5, 7), 12, 0), ((7,), 5, 2**32 - 5), ((2, 4, 4), 1, 123), ((3, 32, 32), 33, 1000)]
    if torch.device(device).type == "cuda":
        small.append(((3, 224, 224), 300, 99_700))  # a sampler batch at ImageNet size
    return small


def test_compiled_generator_equals_the_eager_one_bit_for_bit(monkeypatch, device):
    key = stream(11, "compiled", "estimation")
    for shape, count, start in _shapes(device):
        eager = torch.empty((count, *shape), device=device)
        noise.normal_(eager, key, start)
        fused = torch.full_like(eager, math.nan)
        noise_compiled.normal_(fused, key, start)
        assert torch.equal(fused, eager), (shape, count, start)
    # tiles cut across blocks and draws
    monkeypatch.setattr(noise_compiled, "_TILE_BLOCKS", 50)
    eager = normal(key, 7, 9, (3, 9, 11), device=device)
    fused = torch.empty_like(eager)
    noise_compiled.normal_(fused, key, 7)
    assert torch.equal(fused, eager)


def test_the_sampler_with_compiled_noise_gives_the_same_counts(cnn, device):
    """Gaussian noise through the compiled generator; another family's sampler ignores the option (eager)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 8, 8, generator=gen)
    ids = ["a", "b", "c", "d"]
    plain = Sampler(cnn, SamplerOptions(batch_size=96), device=device).counts(x, ids, 0.5, 400, 0, "estimation")
    fused = Sampler(cnn, SamplerOptions(batch_size=96, compile_noise=True), device=device).counts(
        x, ids, 0.5, 400, 0, "estimation")
    assert np.array_equal(fused, plain)
    laplace = [Sampler(cnn, SamplerOptions(batch_size=96, compile_noise=c), device=device, noise="laplace").counts(
        x, ids, 0.5, 200, 0, "estimation") for c in (False, True)]
    assert np.array_equal(laplace[0], laplace[1])
