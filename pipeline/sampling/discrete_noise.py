"""Discrete Gaussian noise on the 8-bit lattice, drawn exactly: draw j of an input is a pure function of
(seed, id, phase, j), as for the Gaussian stream.

The law, the thresholds and the exact inverse-CDF rule are :mod:`rscert.stats.discrete_gaussian`
(eq. 1 and 4 there); this module feeds them uniform bits and runs them on tensors.

* **Stream.** The same Philox4x32-10 stream and counter layout as :mod:`rscert.sampling.noise`
  (:func:`rscert.sampling.noise.stream` keys it by (seed, id, phase); block b of draw j is counter
  (b, j, c2, c3)). Element 2b of a draw reads U's 63-bit prefix from words (w0, w1) of block b and
  element 2b + 1 from (w2, w3): the high 32 bits of one word and the high 31 of the other (the last
  bit is unused). Same limits: fewer than 2^32 draws per stream, fewer than 2^33 elements per draw.
* **Ambiguous prefixes** (eq. 4: probability about 2^-50 per element) are resolved exactly by
  :func:`rscert.stats.discrete_gaussian.resolve`, which reads U's further bits as 64-bit words
  blake2b-64("rscert/discrete\\x1f{k0}\\x1f{k1}\\x1f{c2}\\x1f{c3}\\x1f{draw}\\x1f{element}\\x1f{q}"),
  q = 0, 1, ...: a pure function of the same identity, so the whole draw stays one.
* **Paths.** CPU: the compiled kernel :mod:`rscert.sampling.discrete_cpu`, one share of the rows per
  thread. Other devices: the torch Philox rounds of :mod:`rscert.sampling.noise` and
  ``torch.searchsorted`` on the thresholds (the same atoms and flags, tested bit for bit on CPU).
  :func:`atoms_` leaves ambiguous elements as candidates and flags their rows, so that a device never
  waits on the host; :func:`resolve_rows_` makes flagged rows exact (the sampler does it before a
  flagged draw votes).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from rscert.sampling.noise import (
    _TILE_BLOCKS,
    _TILE_BLOCKS_DEFAULT,
    MAX_DRAWS,
    MAX_ELEMENTS,
    _philox_tile,
    _single_threaded,
    _Workspace,
    philox4x32,
)
from rscert.sampling.philox import round_keys
from rscert.stats.discrete_gaussian import GUIDE_BITS, LEVELS, Table, lookup, resolve

__all__ = ["GRID_TOLERANCE", "atoms", "atoms_", "extension", "lattice_levels", "noisy_", "off_grid", "prefixes",
           "resolve_rows_"]

Key = tuple[int, int, int, int]

GRID_TOLERANCE = 1e-3
"""A pixel value x is the 8-bit level k = round(255 x) when |255 x - k| <= this (a float encoding of
k/255, such as ToTensor's float32 k/255); any other value is off the grid."""


def off_grid(x: torch.Tensor) -> str | None:
    """Why the pixels ``x`` are not an 8-bit image (every value k/255, k in 0..255), or None if they are.

    Off-grid inputs are refused, not quantised: a quantised input is another image, and a certificate
    for it says nothing of the one given (docs/schema.md, status ``off_grid``)."""
    scaled = x.detach().to(torch.float64) * LEVELS
    levels = torch.round(scaled)
    bad = ((scaled - levels).abs() > GRID_TOLERANCE) | (levels < 0) | (levels > LEVELS)
    count = int(bad.sum())
    if not count:
        return None
    example = float(x.flatten()[int(torch.nonzero(bad.flatten())[0])])
    return (f"{count} of {x.numel()} values are not 8-bit levels k/255 (e.g. {example!r}); --noise "
            "discrete-gaussian certifies 8-bit images: give uint8 data or PNG/JPEG, or use --noise gaussian")


def lattice_levels(x: torch.Tensor) -> torch.Tensor:
    """The integer levels k (int32, same shape and device) of 8-bit pixels x = k/255, or a ValueError
    saying which values are off the grid (:func:`off_grid`)."""
    reason = off_grid(x)
    if reason is not None:
        raise ValueError(reason)
    return torch.round(x.to(torch.float64) * LEVELS).to(torch.int32)


def _check(out: torch.Tensor, start: int, dtype: torch.dtype) -> tuple[int, int]:
    if out.dtype != dtype:
        raise ValueError(f"out: must be {dtype}, got {out.dtype}")
    m = out.shape[0]
    elements = out[0].numel() if m else 0
    if start < 0 or start + m > MAX_DRAWS:
        raise ValueError(f"draws {start}..{start + m - 1} leave the stream's range [0, 2^32)")
    if elements >= MAX_ELEMENTS:
        raise ValueError(f"an input of {elements} elements exceeds the generator's 2^33 - 2")
    return m, elements


def prefixes(hi: torch.Tensor, lo: torch.Tensor, bits: int) -> torch.Tensor:
    """The ``bits``-bit prefix of U = 0.hi lo (two 32-bit words in int64 tensors), as int64."""
    if bits >= 32:
        return (hi << (bits - 32)) | (lo >> (64 - bits))
    return hi >> (32 - bits)


def atoms_(out: torch.Tensor, key: Key, start: int, tab: Table) -> torch.Tensor:
    """Fill ``out`` (int32 [m, ...], contiguous) with the atoms (noise in units of 1/255) of draws
    start .. start + m - 1 of the stream ``key``; return a bool [m] tensor on ``out``'s device marking
    the rows that hold an ambiguous prefix, whose atoms there are candidates until
    :func:`resolve_rows_` (every other row is exact)."""
    m, elements = _check(out, start, torch.int32)
    flags = torch.zeros(m, dtype=torch.bool, device=out.device)
    if m == 0 or elements == 0:
        return flags
    flat = out.view(m, -1)
    if out.device.type == "cpu":
        _cpu_rows("atoms_rows", flat, flags, None, key, start, tab)
    else:
        _atoms_torch(flat, flags, key, start, tab)
    return flags


def noisy_(out: torch.Tensor, levels: torch.Tensor, key: Key, start: int, tab: Table) -> torch.Tensor:
    """Fill ``out`` (float32 [m, ...], contiguous) with the noisy inputs fl32((k + m_j) / 255) of draws
    start .. start + m - 1, k being the int32 ``levels`` of one input (shape ``out.shape[1:]``), by IEEE
    division (the float32 nearest the lattice point, from k + m_j alone); flags as :func:`atoms_`.
    CPU: one fused compiled pass; other devices: :func:`atoms_`, then the sum and the division."""
    m, elements = _check(out, start, torch.float32)
    if out.device.type != "cpu":
        return _noisy_torch(out, levels, key, start, tab)
    flags = torch.zeros(m, dtype=torch.bool)
    if m and elements:
        _cpu_rows("noisy_rows", out.view(m, -1), flags, levels.reshape(-1).contiguous().numpy(), key, start, tab)
    return flags


def _noisy_torch(out: torch.Tensor, levels: torch.Tensor, key: Key, start: int, tab: Table) -> torch.Tensor:
    """:func:`noisy_` with torch ops (any device): atoms, plus the levels, then IEEE division by a [1]
    tensor (CUDA divides by a host scalar through its reciprocal, which is not the nearest float)."""
    m = out.shape[0]
    ints = torch.empty(out.shape, dtype=torch.int32, device=out.device)
    flags = torch.zeros(m, dtype=torch.bool, device=out.device)
    if m and ints[0].numel():
        _atoms_torch(ints.view(m, -1), flags, key, start, tab)
    ints.add_(levels)
    out.copy_(ints).div_(torch.full((1,), float(LEVELS), device=out.device))
    return flags


_THREADS_MIN = 1 << 18
"""CPU calls of at least this many elements share their rows among torch's threads; smaller ones run in
the calling thread (a thread pool's start costs more than they do)."""


def _cpu_rows(kernel: str, flat: torch.Tensor, flags: torch.Tensor, levels: np.ndarray | None, key: Key,
              start: int, tab: Table) -> None:
    """Run a :mod:`rscert.sampling.discrete_cpu` kernel over the rows, one share per torch thread."""
    from rscert.sampling import discrete_cpu, noise_cpu  # numba: only where it is used

    k0, k1, c2, c3 = key
    keys = noise_cpu.round_keys(k0, k1)
    out, flg, fn = flat.numpy(), flags.numpy(), getattr(discrete_cpu, kernel)
    extra = () if levels is None else (levels,)

    def rows(r0: int, r1: int) -> None:
        fn(out[r0:r1], flg[r0:r1], *extra, start + r0, c2, c3, keys, tab.thresholds, tab.guide, tab.i_lo,
           tab.bits, GUIDE_BITS)

    m = flat.shape[0]
    threads = min(torch.get_num_threads(), m) if flat.numel() >= _THREADS_MIN else 1
    if threads <= 1:
        rows(0, m)
        return
    cuts = [m * t // threads for t in range(threads + 1)]
    with _single_threaded(), concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(rows, cuts[:-1], cuts[1:]))


def _atoms_torch(flat: torch.Tensor, flags: torch.Tensor, key: Key, start: int, tab: Table) -> None:
    """The same atoms and flags with torch ops (any device): Philox tiles, then ``torch.searchsorted``."""
    dev = flat.device
    m, elements = flat.shape
    k0, k1, c2, c3 = key
    keys = round_keys(k0, k1)
    thresholds = torch.as_tensor(tab.thresholds, device=dev)
    size, top = thresholds.numel(), tab.top
    blocks = (elements + 1) // 2
    tile = _TILE_BLOCKS.get(dev.type, _TILE_BLOCKS_DEFAULT)
    cols = min(blocks, tile)
    rows = min(m, max(1, tile // cols))
    for b0 in range(0, blocks, cols):
        for r0 in range(0, m, rows):
            b1, r1 = min(blocks, b0 + cols), min(m, r0 + rows)
            ws = _Workspace((r1 - r0, b1 - b0), dev)
            c0 = torch.arange(b0, b1, device=dev, dtype=torch.int64).unsqueeze(0)
            c1 = torch.arange(start + r0, start + r1, device=dev, dtype=torch.int64).unsqueeze(1)
            w0, w1, w2, w3 = _philox_tile(ws, c0, c1, c2, c3, keys)
            e0, e1 = 2 * b0, min(elements, 2 * b1)
            dest = flat[r0:r1, e0:e1]
            for half, (hi, lo) in enumerate(((w0, w1), (w2, w3))):
                p = prefixes(hi, lo, tab.bits)[:, : dest[:, half::2].shape[1]]
                j = torch.searchsorted(thresholds, p.contiguous())
                hit = (thresholds[j.clamp(max=size - 1)] == p) & (j < size)
                amb = hit | (p == 0) | (p == top)
                dest[:, half::2] = (j + tab.i_lo).to(torch.int32)
                flags[r0:r1] |= amb.any(dim=1)


def extension(key: Key, draw: int, element: int) -> Iterator[int]:
    """U's bits after the prefix for one element, as 64-bit words (module docstring): a pure function of
    (key, draw, element)."""
    head = "rscert/discrete\x1f" + "\x1f".join(str(v) for v in (*key, draw, element))
    for q in itertools.count():
        digest = hashlib.blake2b(f"{head}\x1f{q}".encode(), digest_size=8).digest()
        yield int.from_bytes(digest, "little")


def resolve_rows_(out: torch.Tensor, key: Key, start: int, rows: Sequence[int], tab: Table) -> None:
    """Make rows ``rows`` of ``out`` (filled by :func:`atoms_` for draws start ..) exact: recompute each
    draw's prefixes with the reference Philox rounds, look them up (numpy) and resolve every ambiguous
    element with :func:`rscert.stats.discrete_gaussian.resolve`."""
    m = out.shape[0]
    flat = out.view(m, -1)
    elements = flat.shape[1]
    k0, k1, c2, c3 = key
    blocks = torch.arange((elements + 1) // 2, dtype=torch.int64)
    for r in rows:
        draw = start + int(r)
        w0, w1, w2, w3 = philox4x32(blocks, draw, c2, c3, k0, k1)
        pre = torch.stack([prefixes(w0, w1, tab.bits), prefixes(w2, w3, tab.bits)], dim=1).reshape(-1)[:elements]
        atom, amb = lookup(tab, pre.numpy())
        for e in np.flatnonzero(amb):
            atom[e] = resolve(tab, int(pre[e]), extension(key, draw, int(e)))
        flat[int(r)].copy_(torch.from_numpy(atom.astype(np.int32)).to(flat.device))


def atoms(key: Key, start: int, count: int, shape: tuple[int, ...], tab: Table,
          device: torch.device | str = "cpu") -> torch.Tensor:
    """Draws start .. start + count - 1 of the stream ``key``, exact, as a new int32 tensor [count, *shape]."""
    out = torch.empty((count, *shape), dtype=torch.int32, device=device)
    flags = atoms_(out, key, start, tab)
    resolve_rows_(out, key, start, torch.nonzero(flags).flatten().tolist(), tab)
    return out
