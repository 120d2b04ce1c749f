"""The counter-based noise generator: Philox4x32-10 bits, the Gaussian law, and its addressing."""

import hashlib
import math

import numpy as np
import pytest
import torch
from scipy import stats

from rscert.sampling import noise
from rscert.sampling.noise import MAX_DRAWS, normal, normal_, philox4x32, stream

_MASK = 0xFFFFFFFF


@pytest.fixture(autouse=True, params=["kernel", "torch rounds"])
def cpu_path(request, monkeypatch):
    """Every test on both CPU paths: Philox words from rscert.sampling.noise_cpu, and from the torch rounds."""
    monkeypatch.setattr(noise, "_CPU_KERNEL_MIN", 0 if request.param == "kernel" else 1 << 62)

# Known-answer vectors of Philox4x32-10 (Random123's kat_vectors): counter, key -> output.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((_MASK,) * 4, (_MASK, _MASK), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def reference_philox(counter, key):
    """Philox4x32-10 with Python's unbounded integers: full 64-bit products, no tricks."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(10):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) & _MASK, (k1 + 0xBB67AE85) & _MASK
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & _MASK, (p0 >> 32) ^ c3 ^ k1, p0 & _MASK
    return c0, c1, c2, c3


F32 = np.float32
THETA_STEP = F32(2 * math.pi * 2.0**-24)  # c = fl32(2 pi 2^-24)


def reference_pair(w0, w1, w2):
    """The documented float32 Box-Muller of one block, with numpy float32 scalars (numpy's ln, sqrt,
    cos and sin: within an ulp or two of torch's)."""
    u1 = F32((w0 << 21 | w1 >> 11) + 1) * F32(2.0**-53)  # rounded to float32; the scaling is exact
    theta = F32(w2 >> 8) * THETA_STEP
    r = np.sqrt(F32(-2) * np.log(u1))
    return r * np.cos(theta), r * np.sin(theta)


def reference_normal(seed, ident, phase, draw, elements):
    """The documented construction, element by element, in numpy float32."""
    digest = hashlib.blake2b(f"{seed}\x1f{ident}\x1f{phase}".encode(), digest_size=16).digest()
    k0, k1, c2, c3 = (int.from_bytes(digest[4 * i : 4 * i + 4], "little") for i in range(4))
    out = []
    for b in range((elements + 1) // 2):
        w0, w1, w2, w3 = reference_philox((b, draw, c2, c3), (k0, k1))
        out += reference_pair(w0, w1, w2)
    return np.array(out[:elements], dtype=np.float32)


@pytest.mark.parametrize(("counter", "key", "expected"), KAT)
def test_philox_matches_the_known_answers(counter, key, expected):
    assert reference_philox(counter, key) == expected
    assert philox4x32(*counter, *key) == expected  # Python ints through the library's round
    words = philox4x32(*(torch.tensor([c], dtype=torch.int64) for c in counter), *key)
    assert tuple(int(w) for w in words) == expected  # int64 tensors: no overflow, same bits


def test_tensor_rounds_match_the_reference_on_random_counters():
    rng = np.random.default_rng(0)
    counters = rng.integers(0, 2**32, size=(4, 64), dtype=np.int64)
    key = (0xFFFFFFFF, 0x80000001)
    words = philox4x32(*(torch.from_numpy(c) for c in counters), *key)
    for i in range(64):
        assert tuple(int(w[i]) for w in words) == reference_philox(tuple(int(c[i]) for c in counters), key)


@pytest.mark.parametrize("shape", [(3, 2, 2), (7,), (2, 5, 3)])  # even and odd element counts
def test_noise_follows_the_documented_construction(shape):
    elements = math.prod(shape)
    got = normal(stream(5, "12", "estimation"), 40, 3, shape)
    assert got.shape == (3, *shape) and got.dtype == torch.float32
    for i in range(3):
        want = reference_normal(5, "12", "estimation", 40 + i, elements)
        # u1 and theta are exact float32 steps; ln, sqrt, cos, sin of torch and numpy differ by an ulp
        np.testing.assert_allclose(got[i].flatten().numpy(), want, rtol=5e-7, atol=1e-7)


def test_draws_do_not_depend_on_range_or_tiling(monkeypatch):
    key = stream(0, "x", "selection")
    whole = normal(key, 0, 12, (3, 5, 7))
    assert torch.equal(torch.cat([normal(key, 0, 5, (3, 5, 7)), normal(key, 5, 7, (3, 5, 7))]), whole)
    assert torch.equal(normal(key, 9, 1, (3, 5, 7))[0], whole[9])
    for tile in (1, 7, 64, 1 << 20):  # tiles cut across blocks and draws in every way
        monkeypatch.setitem(noise._TILE_BLOCKS, "cpu", tile)
        assert torch.equal(normal(key, 0, 12, (3, 5, 7)), whole)


def test_the_law_is_standard_normal():
    """Mean, variance, KS against scipy's normal, and the mass beyond 4 sigma, on 1.2M values."""
    z = normal(stream(1, "law", "estimation"), 0, 400, (3000,)).double().numpy().ravel()
    size = z.size
    assert abs(z.mean()) < 5 / math.sqrt(size)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / size)
    assert stats.kstest(z, stats.norm.cdf).pvalue > 1e-4
    expected = 2 * stats.norm.sf(4) * size  # 76 values beyond 4 sigma
    assert abs((np.abs(z) > 4).sum() - expected) < 5 * math.sqrt(expected)
    # each half of the Box-Muller pair is normal on its own
    for half in (z.reshape(-1, 2)[:, 0], z.reshape(-1, 2)[:, 1]):
        assert stats.kstest(half, stats.norm.cdf).pvalue > 1e-4


def box_muller(w0, w1, w2):
    """The library's float32 Box-Muller of one block of given words (torch path)."""
    ws = noise._Workspace((1, 1), torch.device("cpu"))
    words = [torch.tensor([[w]], dtype=torch.int64) for w in (w0, w1, w2, 0)]
    noise._uniforms_tile(ws, words)
    z = torch.empty(1, 2)
    noise._box_muller_tile(ws, z[:, 0:1], z[:, 1:2])
    return float(z[0, 0]), float(z[0, 1])


def test_the_tails_reach_beyond_eight_sigma():
    """The radius uses a 53-bit uniform rounded to float32, whose exponent range holds 2^-53: the
    smallest, 2^-53, gives r = sqrt(106 ln 2) = 8.57, where a 24-bit uniform stops at 5.8."""
    z0, z1 = box_muller(0, 0, 0)  # u1 = 2^-53, theta = 0
    assert z0 == pytest.approx(math.sqrt(106 * math.log(2)), rel=3e-7) and z1 == 0.0
    assert z0 > 8.5
    z0, z1 = box_muller(0, 1 << 11, 1 << 30)  # u1 = 2^-52, theta = 2 pi 2^-2 (float32): (~0, r)
    assert z1 == pytest.approx(math.sqrt(104 * math.log(2)), rel=3e-7) and abs(z0) < 1e-5


def test_u1_rounds_to_one_only_at_the_top_of_its_range():
    """fl32(n) = 2^53 (u1 = 1, r = 0, the pair (0, 0)) exactly for n >= 2^53 - 2^28: 2^28 + 1 of the
    2^53 values, probability ~2^-25 (module docstring); just below, the radius is the exact one."""
    top = (1 << 32) - 1
    assert box_muller(top, top, 5) == (0.0, 0.0)  # n = 2^53
    n = (1 << 53) - (1 << 28)  # a tie, rounded to the even 2^53
    assert box_muller(n - 1 >> 21, (n - 1) % (1 << 21) << 11, 5) == (0.0, 0.0)
    n -= 1  # rounds down to 2^53 - 2^29: u1 = 1 - 2^-24, r = sqrt(-2 ln(1 - 2^-24)) ~ 3.45e-4
    z0, z1 = box_muller(n - 1 >> 21, (n - 1) % (1 << 21) << 11, 0)
    assert z0 == pytest.approx(math.sqrt(-2 * math.log1p(-(2.0**-24))), rel=1e-6) and z1 == 0.0
    assert np.float32(reference_pair(n - 1 >> 21, (n - 1) % (1 << 21) << 11, 0)[0]) == pytest.approx(z0, rel=1e-6)


def test_streams_and_draws_are_independent():
    """Correlations between phases, ids, seeds, neighbouring draws and neighbouring elements ~ 0."""
    shape, draws = (8,), 20_000
    base = normal(stream(0, "7", "estimation"), 0, draws, shape).double().numpy()
    others = {
        "phase": normal(stream(0, "7", "selection"), 0, draws, shape),
        "id": normal(stream(0, "8", "estimation"), 0, draws, shape),
        "seed": normal(stream(1, "7", "estimation"), 0, draws, shape),
        "next draw": normal(stream(0, "7", "estimation"), 1, draws, shape),
    }
    bound = 5 / math.sqrt(base.size)
    for name, other in others.items():
        corr = np.corrcoef(base.ravel(), other.double().numpy().ravel())[0, 1]
        assert abs(corr) < bound, name
    corr = np.corrcoef(base.T)  # elements of one draw, in and across Box-Muller pairs
    assert np.abs(corr[~np.eye(8, dtype=bool)]).max() < 5 / math.sqrt(draws)
    # |z| of the two halves of a pair are independent too (not only uncorrelated)
    assert abs(np.corrcoef(np.abs(base[:, 0]), np.abs(base[:, 1]))[0, 1]) < 5 / math.sqrt(draws)


def test_no_two_draws_of_a_stream_share_a_value():
    values = normal(stream(0, "0", "estimation"), 0, 100_100, (2,)).numpy()
    assert len(np.unique(values.view(np.int64))) == 100_100


def test_bad_ranges_are_refused():
    key = stream(0, "a", "selection")
    with pytest.raises(ValueError, match="range"):
        normal(key, MAX_DRAWS - 1, 2, (2,))
    with pytest.raises(ValueError, match="range"):
        normal(key, -1, 1, (2,))
    with pytest.raises(ValueError, match="float32"):
        normal_(torch.empty(1, 2, dtype=torch.float64), key, 0)
    with pytest.raises(ValueError, match="phase"):
        stream(0, "a", "warmup")
    with pytest.raises(ValueError, match="seed"):
        stream(-1, "a", "selection")
