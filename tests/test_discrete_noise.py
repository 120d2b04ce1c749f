"""Discrete Gaussian noise (rscert.sampling.discrete_noise): the documented bits, the exact law, both paths,
and addressing by (seed, id, phase, draw) alone."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from scipy import stats

from rscert.sampling import discrete_noise as dn
from rscert.sampling.noise import philox4x32, stream
from rscert.stats import discrete_gaussian as dg


def _reference(key: tuple[int, int, int, int], draw: int, elements: int, tab: dg.Table) -> np.ndarray:
    """The documented construction element by element, with Python integers: element 2b + h reads the
    prefix of U from words (w_2h, w_2h+1) of block (b, draw, c2, c3), then eq. 4 (resolving when ambiguous)."""
    k0, k1, c2, c3 = key
    out = []
    for e in range(elements):
        words = [int(w) for w in philox4x32(e // 2, draw, c2, c3, k0, k1)]
        hi, lo = words[2 * (e % 2)], words[2 * (e % 2) + 1]
        prefix = ((hi << 32) | lo) >> (64 - tab.bits)
        atom, amb = dg.lookup(tab, np.array([prefix]))
        out.append(dg.resolve(tab, prefix, dn.extension(key, draw, e)) if amb[0] else int(atom[0]))
    return np.array(out)


@pytest.mark.parametrize("bits", [16, 63])
def test_atoms_follow_the_documented_construction(bits: int) -> None:
    tab = dg.table(0.25, bits)
    key = stream(3, "img-7", "estimation")
    got = dn.atoms(key, 5, 4, (3, 7), tab)
    for r in range(4):
        np.testing.assert_array_equal(got[r].flatten().numpy(), _reference(key, 5 + r, 21, tab))


def test_extension_words_are_blake2b_of_the_identity() -> None:
    key = (1, 2, 3, 4)
    words = dn.extension(key, 9, 11)
    for q in range(3):
        text = f"rscert/discrete\x1f1\x1f2\x1f3\x1f4\x1f9\x1f11\x1f{q}".encode()
        assert next(words) == int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


@pytest.mark.parametrize("bits", [16, 63])
def test_compiled_and_torch_paths_agree_bit_for_bit(bits: int) -> None:
    tab = dg.table(0.5, bits)
    key = stream(0, "a", "selection")
    shape = (9, 3, 5, 7)  # an odd element count: the last block's second half is unused
    kernel = torch.empty(shape, dtype=torch.int32)
    flags_kernel = dn.atoms_(kernel, key, 11, tab)
    rounds = torch.empty(shape, dtype=torch.int32)
    flags_rounds = torch.zeros(9, dtype=torch.bool)
    dn._atoms_torch(rounds.view(9, -1), flags_rounds, key, 11, tab)
    assert torch.equal(kernel, rounds) and torch.equal(flags_kernel, flags_rounds)
    if bits == 16:
        assert flags_kernel.any()  # ambiguous prefixes are frequent at 16 bits: the flags are exercised
    # unflagged rows are exact already: resolving them changes nothing
    exact = kernel.clone()
    dn.resolve_rows_(exact, key, 11, list(range(9)), tab)
    assert torch.equal(exact[~flags_kernel], kernel[~flags_kernel])


def test_noisy_inputs_fused_and_torch_paths_agree_bit_for_bit() -> None:
    """The sampler's CPU kernel writes fl32((k + m) / 255) in one pass; the torch path (other devices) adds
    and divides: the same floats, the float32 nearest each lattice point."""
    tab = dg.table(0.25)
    key = stream(1, "n", "estimation")
    levels = torch.randint(0, 256, (3, 4, 5), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    fused = torch.empty((6, 3, 4, 5))
    flags = dn.noisy_(fused, levels, key, 2, tab)
    rounds = torch.empty((6, 3, 4, 5))
    assert torch.equal(dn._noisy_torch(rounds, levels, key, 2, tab), flags)
    assert torch.equal(fused, rounds)
    lattice = (dn.atoms(key, 2, 6, (3, 4, 5), tab) + levels).numpy()
    np.testing.assert_array_equal(fused.numpy(), lattice.astype(np.float32) / np.float32(255))


def test_a_draw_is_a_pure_function_of_its_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dn, "_THREADS_MIN", 0)  # rows shared among threads even for this small call
    tab = dg.table(0.25)
    key = stream(0, "x", "estimation")
    whole = dn.atoms(key, 0, 12, (2, 6, 6), tab)
    part = dn.atoms(key, 4, 5, (2, 6, 6), tab)
    assert torch.equal(whole[4:9], part)
    torch.set_num_threads(1)
    try:
        single = dn.atoms(key, 0, 12, (2, 6, 6), tab)
    finally:
        torch.set_num_threads(2)
    assert torch.equal(whole, single)
    # small tiles on the torch path: the same draws
    monkeypatch.setitem(dn._TILE_BLOCKS, "cpu", 5)
    tiled = torch.empty((12, 2, 6, 6), dtype=torch.int32)
    dn._atoms_torch(tiled.view(12, -1), torch.zeros(12, dtype=torch.bool), key, 0, tab)
    assert torch.equal(whole, tiled)
    # another seed, input or phase: other noise
    for other in (stream(1, "x", "estimation"), stream(0, "y", "estimation"), stream(0, "x", "selection")):
        assert not torch.equal(whole, dn.atoms(other, 0, 12, (2, 6, 6), tab))
    # every draw distinct
    rows = whole.view(12, -1)
    assert len({tuple(r.tolist()) for r in rows}) == 12


def _chi_square(sample: np.ndarray, sigma: float) -> float:
    """p-value of Pearson's chi-square of the sample against eq. 1 (atoms pooled into cells of expected >= 20)."""
    values, counts = np.unique(sample, return_counts=True)
    lo, hi = int(values.min()), int(values.max())
    atoms = np.arange(lo - 1, hi + 2)
    probs = np.array([float(dg.atom_probability(int(m), sigma)) for m in atoms])
    probs[0] = float(dg.boundary(lo - 1, sigma))  # everything below lo, and above hi, in the end cells
    probs[-1] = 1.0 - float(dg.boundary(hi, sigma))
    observed = np.zeros(atoms.size)
    observed[np.searchsorted(atoms, values)] = counts
    expected = probs * sample.size
    cells_o, cells_e, acc_o, acc_e = [], [], 0.0, 0.0
    for o, e in zip(observed, expected, strict=True):
        acc_o, acc_e = acc_o + o, acc_e + e
        if acc_e >= 20:
            cells_o.append(acc_o)
            cells_e.append(acc_e)
            acc_o = acc_e = 0.0
    cells_o[-1] += acc_o
    cells_e[-1] += acc_e
    return float(stats.chisquare(cells_o, cells_e).pvalue)


@pytest.mark.parametrize(("sigma", "bits"), [(0.02, 63), (0.25, 63), (0.02, 16)])
def test_the_law_is_the_rounded_gaussian(sigma: float, bits: int) -> None:
    """Chi-square against the exact probabilities of eq. 1; at 16 bits, about one element in 1,500 is
    ambiguous and the law is still exact (resolution, not the prefix, decides those)."""
    tab = dg.table(sigma, bits)
    sample = dn.atoms(stream(2, "law", "estimation"), 0, 60, (4000,), tab).numpy().ravel()
    assert _chi_square(sample, sigma) > 1e-4
    # and its moments: mean 0, variance close to (255 sigma)^2 + 1/12 (Sheppard)
    scale = dg.LEVELS * sigma
    assert abs(sample.mean()) < 5 * scale / np.sqrt(sample.size)
    assert abs(sample.var() / (scale**2 + 1 / 12) - 1) < 0.02


def test_bad_arguments() -> None:
    tab = dg.table(0.5)
    with pytest.raises(ValueError, match="int32"):
        dn.atoms_(torch.empty((2, 3)), (1, 2, 3, 4), 0, tab)
    with pytest.raises(ValueError, match="range"):
        dn.atoms_(torch.empty((2, 3), dtype=torch.int32), (1, 2, 3, 4), 2**32 - 1, tab)
