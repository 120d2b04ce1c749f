"""Counter-based noise: draw j of an input is a pure function of (seed, id, phase, j), for every family.

The Gaussian family is below; the others (Laplace, uniform: :mod:`rscert.sampling.draws`) take the same
stream, counters and blocks (block b of draw j gives elements 2b and 2b+1), so every guarantee stated
here holds for them too; each family's generator has its own name (``Family.version``,
rscert.stats.families) in a run's fingerprint.

Generator (``NOISE_VERSION``): Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as
1, 2, 3", SC 2011), written with torch integer ops so that CPU and CUDA run the same algorithm and
give the same Philox words. On CPU, calls large enough to repay its start-up take the words, and the
float32 uniform and angle formed from them, from a numba-compiled kernel (:mod:`rscert.sampling.noise_cpu`):
the same floats bit for bit, fed to the same torch float32 Box-Muller code, so the CPU's normals do
not depend on which of the two computes them. (ln, sqrt, cos and sin are the device's own: CPU and
CUDA may differ in a float32 last bit.)

* **Stream.** A 128-bit blake2b hash of (seed, id, phase) gives the 64-bit Philox key (k0, k1) and the
  upper 64 counter bits (c2, c3): one stream per (seed, id, phase).
* **Counter.** The lower 64 counter bits address one block of draw j: c0 = block b of the draw's
  elements, c1 = j. Block b of draw j gives elements 2b and 2b+1 of that draw (flattened, C order).
* **Gaussians.** Each 128-bit block (w0, w1, w2, w3) gives two independent N(0, 1) values by
  Box-Muller, computed in float32 (the output's precision), fl32 denoting rounding to nearest float32:
  u1 = fl32(w0·2^21 + ⌊w1 / 2^11⌋ + 1)·2^-53 ∈ [2^-53, 1] is a 53-bit uniform rounded to float32
  (relative error ≤ 2^-24; float32's exponent range holds 2^-53 exactly), r = sqrt(-2 ln u1),
  θ = fl32(⌊w2 / 2^8⌋ · c) with c = fl32(2π·2^-24) (a 24-bit angle, exact grid of 2^24 values in
  [0, 2π)), and the pair is (r cos θ, r sin θ), every step in float32. The low 11 bits of w1 and the
  low 8 bits of w2 and all of w3 are unused.
  The radius reaches sqrt(2·53·ln 2) ≈ 8.57 (not the ≈ 5.8 of a 24-bit uniform), so the tails are
  those of the normal law down to probabilities of order 2^-53. The rounding of u1 makes it exactly 1
  when the integer is ≥ 2^53 - 2^28 (2^28 + 1 of its 2^53 values, probability ≈ 2^-25): then r = 0
  and the pair is (0, 0) instead of a pair of norm below sqrt(2·2^-25) ≈ 2.4·10^-4; the law moves by
  at most 2^-25 in total variation, far below any bound's slack, and no certificate relies on it.

Guarantees (by construction, not by chance):

* **Within one input** (one stream) no two draws, and no two blocks of one draw, share a counter;
  for a fixed key Philox is a bijection of the 128-bit counter, so every block of every draw is a
  distinct output of the permutation. Limits: fewer than 2^32 draws per (seed, id, phase) and fewer
  than 2^33 elements per draw (checked).
* **Across inputs, phases and seeds** streams differ unless two 128-bit blake2b hashes of distinct
  (seed, id, phase) texts collide (about 2^-128 per pair).
* **Reproducibility.** The noise of draw j never depends on which call, batch, device, worker or
  companion inputs produce it, nor on the tiling used here: every element is computed from its own
  counter.

Integer arithmetic stays within int64 without overflow: a round's 32 x 32 -> 64-bit product m * a is
computed as (m - 2^32) * a + a * 2^32, where |(m - 2^32) * a| < 2^63 (see :func:`_mulhilo`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
from collections.abc import Iterator

import torch

from rscert.constants import NOISE_VERSION  # noqa: F401 - re-exported; torch-free home for the configuration
from rscert.sampling.draws import DRAWS, Draw
from rscert.sampling.philox import M0, M1, MASK32, ROUNDS, THETA_STEP, TWO_POW_M53, W0, W1, round_keys

PHASES = ("selection", "estimation", "prediction")

MAX_DRAWS = 1 << 32
MAX_ELEMENTS = 1 << 33
_TWO_POW_M53 = TWO_POW_M53
_THETA_STEP = THETA_STEP  # applied as the float32 c = fl32(2 pi 2^-24) (torch's float32 opmath)
_TILE_BLOCKS = {"cpu": 1 << 14}  # blocks per tile: CPU tiles stay in cache; other devices go larger
_TILE_BLOCKS_DEFAULT = 1 << 22
_CPU_KERNEL_MIN = 1 << 18
"""Calls on CPU of at least this many values take their Philox words from :mod:`rscert.sampling.noise_cpu`;
smaller ones use the torch rounds (same words). Numba's first call costs a process about 0.5 s
(cached machine code; about 0.8 s the first time): only calls this large make it back quickly."""


def stream(seed: int, ident: str, phase: str) -> tuple[int, int, int, int]:
    """(k0, k1, c2, c3): Philox key and upper counter words of the stream of (seed, id, phase).

    The four 32-bit words are the little-endian words of blake2b-128 of ``"{seed}\\x1f{id}\\x1f{phase}"``.
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: must be an integer >= 0, got {seed!r}")
    text = f"{seed}\x1f{ident}\x1f{phase}".encode()
    digest = hashlib.blake2b(text, digest_size=16).digest()
    k0, k1, c2, c3 = (int.from_bytes(digest[4 * i : 4 * i + 4], "little") for i in range(4))
    return k0, k1, c2, c3


def _mulhilo(m: int, a):  # noqa: ANN001, ANN202 - a is an int64 tensor of 32-bit values or a Python int
    """(hi, lo) 32-bit words of the 64-bit product m * a, without leaving int64.

    With m' = m - 2^32 (|m'| < 2^31), m * a = m' * a + a * 2^32 and |m' * a| < 2^63: no overflow.
    lo = (m' a) mod 2^32 (two's complement low bits) and hi = floor(m' a / 2^32) + a (arithmetic shift).
    """
    t = a * (m - (1 << 32))
    return (t >> 32) + a, t & MASK32


def philox4x32(c0, c1, c2, c3, k0: int, k1: int):  # noqa: ANN001, ANN201
    """Philox4x32-10 of counter (c0, c1, c2, c3) under key (k0, k1); words are int64 tensors
    (broadcast against each other) holding values in [0, 2^32), or Python ints. Reference form;
    :func:`normal_` runs the same rounds in place."""
    for r in range(ROUNDS):
        if r:
            k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
        hi0, lo0 = _mulhilo(M0, c0)
        hi1, lo1 = _mulhilo(M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


class _Workspace:
    """Preallocated int64 and float32 tiles, so the rounds and Box-Muller allocate nothing."""

    def __init__(self, shape: tuple[int, int], device: torch.device) -> None:
        self.shape = shape
        self.ints = [torch.empty(shape, dtype=torch.int64, device=device) for _ in range(8)]
        self.floats = [torch.empty(shape, dtype=torch.float32, device=device) for _ in range(3)]


def _philox_tile(ws: _Workspace, c0, c1, c2, c3, keys: list[tuple[int, int]]) -> list[torch.Tensor]:  # noqa: ANN001
    """Philox4x32-10 over one tile; returns four int64 tensors (views of the workspace)."""
    m0, m1 = M0 - (1 << 32), M1 - (1 << 32)
    # the first two rounds on broadcast shapes (cheap when counters vary along one axis only)
    for k0, k1 in keys[:2]:
        hi0, lo0 = _mulhilo(M0, c0)
        hi1, lo1 = _mulhilo(M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    state = ws.ints[:4]
    for dst, src in zip(state, (c0, c1, c2, c3), strict=True):
        if isinstance(src, int):
            dst.fill_(src)
        else:
            dst.copy_(src.expand(ws.shape))
    s0, s1, s2, s3 = ws.ints[4:]
    for k0, k1 in keys[2:]:
        c0, c1, c2, c3 = state
        torch.mul(c0, m0, out=s0)
        torch.bitwise_right_shift(s0, 32, out=s1).add_(c0)  # hi0
        s0.bitwise_and_(MASK32)  # lo0
        torch.mul(c2, m1, out=s2)
        torch.bitwise_right_shift(s2, 32, out=s3).add_(c2)  # hi1
        s2.bitwise_and_(MASK32)  # lo1
        s3.bitwise_xor_(c1).bitwise_xor_(k0)  # new c0
        s1.bitwise_xor_(c3).bitwise_xor_(k1)  # new c2
        state, (s0, s1, s2, s3) = [s3, s2, s1, s0], (c0, c1, c2, c3)
    return state


def _uniforms_tile(ws: _Workspace, words: list[torch.Tensor]) -> None:
    """u1 = fl32(w0·2^21 + ⌊w1/2^11⌋ + 1)·2^-53 into ``ws.floats[0]`` and θ = fl32(⌊w2/2^8⌋·c),
    c = fl32(2π·2^-24), into ``ws.floats[1]`` (module docstring). Consumes ``words`` (modified in place).
    Exact integer steps, then correctly rounded float32 conversions and one product: the compiled
    kernel (:func:`rscert.sampling.noise_cpu.uniforms_tile`) gives the same floats bit for bit."""
    w0, w1, w2, _ = words
    w0.bitwise_left_shift_(21).bitwise_or_(w1.bitwise_right_shift_(11)).add_(1)  # [1, 2^53]
    w2.bitwise_right_shift_(8)  # [0, 2^24)
    u1, theta, _ = ws.floats
    u1.copy_(w0).mul_(_TWO_POW_M53)  # (0, 1], rounded to float32; the product by 2^-53 is exact
    theta.copy_(w2).mul_(_THETA_STEP)  # exact integer, then one float32 product: 2 pi u2, u2 in [0, 1)


def _box_muller_tile(ws: _Workspace, z0: torch.Tensor, z1: torch.Tensor) -> None:
    """From u1 and θ in ``ws.floats[:2]``, write r cos θ into ``z0`` and r sin θ into ``z1``, with
    r = sqrt(-2 ln u1), every step in float32 (views of the output, possibly strided; ``z1`` may have
    one column fewer than the tile)."""
    radius, theta, other = ws.floats
    radius.log_().mul_(-2.0).sqrt_()  # sqrt(-2 ln u1), u1 in [2^-53, 1]: r in [0, 8.57]
    cols = z1.shape[1]
    torch.sin(theta, out=other)
    torch.mul(other[:, :cols], radius[:, :cols], out=z1)
    theta.cos_()
    torch.mul(theta, radius, out=z0)


def normal_(out: torch.Tensor, key: tuple[int, int, int, int], start: int) -> torch.Tensor:
    """:func:`draw_` of the Gaussian family: i.i.d. N(0, 1) elements."""
    return draw_(out, key, start, "gaussian")


def draw_target(out: torch.Tensor, start: int) -> tuple[int, torch.Tensor, int]:
    """(m, out viewed as [m, elements], elements) for draws start .. start+m-1 into ``out``, after the
    checks every generator makes: float32, draws inside the stream's 2^32, elements inside its 2^33 - 2."""
    if out.dtype != torch.float32:
        raise ValueError(f"out: must be float32, got {out.dtype}")
    m = out.shape[0]
    flat = out.view(m, -1)
    elements = flat.shape[1]
    if start < 0 or start + m > MAX_DRAWS:
        raise ValueError(f"draws {start}..{start + m - 1} leave the stream's range [0, 2^32)")
    if elements >= MAX_ELEMENTS:
        raise ValueError(f"an input of {elements} elements exceeds the generator's 2^33 - 2")
    return m, flat, elements


def draw_(out: torch.Tensor, key: tuple[int, int, int, int], start: int, family: str = "gaussian") -> torch.Tensor:
    """Fill ``out`` (shape [m, ...], float32, contiguous) with draws start .. start+m-1 of the
    stream ``key`` (from :func:`stream`), of the noise family ``family`` at unit variance.

    Row i of ``out`` receives draw start + i: its elements (flattened) are i.i.d. N(0, 1), element
    2b + h of draw j being half h of the Box-Muller pair of counter (b, j, c2, c3).

    On CPU, for calls of at least ``_CPU_KERNEL_MIN`` values, the float32 u1 and θ come from the
    compiled kernel of :mod:`rscert.sampling.noise_cpu` (the same floats, tested bit for bit), otherwise from
    :func:`_philox_tile` and :func:`_uniforms_tile`; on CPU the tiles are shared among
    ``torch.get_num_threads()`` threads. The rest of Box-Muller is :func:`_box_muller_tile` on every
    device, written straight into ``out``. Other families (:data:`rscert.sampling.draws.DRAWS`) take the
    same blocks of the same stream: their two floats per block from :func:`rscert.sampling.noise_cpu.pairs_tile`
    or the family's torch rule, then the family's float32 transform, written straight into ``out``.
    """
    if family != "gaussian" and family not in DRAWS:
        raise ValueError(f"noise: no draw for family {family!r}; families: gaussian, {', '.join(DRAWS)}")
    m, flat, elements = draw_target(out, start)
    if m == 0 or elements == 0:
        return out
    blocks = (elements + 1) // 2
    tile = _TILE_BLOCKS.get(out.device.type, _TILE_BLOCKS_DEFAULT)
    cols = min(blocks, tile)
    rows = min(m, max(1, tile // cols))
    tiles = [(b0, r0) for b0 in range(0, blocks, cols) for r0 in range(0, m, rows)]
    fill = _Filler(flat, key, start, cols, rows, DRAWS.get(family))
    if out.device.type != "cpu":
        fill(tiles)
        return out
    threads = min(torch.get_num_threads(), len(tiles)) if fill.kernel else 1
    with _single_threaded():
        if threads == 1:
            fill(tiles)
        else:  # numba kernel and torch ops release the GIL: one share of the tiles per thread
            with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                list(pool.map(fill, [tiles[t::threads] for t in range(threads)]))
    return out


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """Run each tile op in its calling thread: tiles are cache-sized, and an intra-op parallel
    region per small op costs more than it saves (and much more on a busy machine)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Filler:
    """Computes tiles of draws into ``flat``; one instance per call, one workspace per tile shape
    and thread."""

    def __init__(self, flat: torch.Tensor, key: tuple[int, int, int, int], start: int, cols: int, rows: int,
                 draw: Draw | None = None) -> None:
        self.flat, self.start, self.cols, self.rows, self.draw = flat, start, cols, rows, draw
        k0, k1, self.c2, self.c3 = key
        self.keys = round_keys(k0, k1)
        self.kernel = None
        if flat.device.type == "cpu" and flat.numel() >= _CPU_KERNEL_MIN:
            from rscert.sampling import noise_cpu  # imports numba: only where it is used

            self.cpu_keys = noise_cpu.round_keys(k0, k1)
            self.kernel = noise_cpu.uniforms_tile if draw is None else noise_cpu.pairs_tile

    def __call__(self, tiles: list[tuple[int, int]]) -> None:
        workspaces: dict[tuple[int, int], _Workspace] = {}
        for b0, r0 in tiles:
            self._tile(b0, r0, workspaces)

    def _tile(self, b0: int, r0: int, workspaces: dict[tuple[int, int], _Workspace]) -> None:
        flat, dev = self.flat, self.flat.device
        m, elements = flat.shape
        b1, r1 = min((elements + 1) // 2, b0 + self.cols), min(m, r0 + self.rows)
        shape = (r1 - r0, b1 - b0)
        ws = workspaces.get(shape) or workspaces.setdefault(shape, _Workspace(shape, dev))
        if self.draw is not None:
            self._family_tile(ws, b0, b1, r0, r1)
            return
        if self.kernel is not None:  # the same u1 and theta, from the compiled kernel
            u1, theta, _ = ws.floats
            self.kernel(u1.numpy(), theta.numpy(), b0, self.start + r0, self.c2, self.c3, self.cpu_keys)
        else:
            c0 = torch.arange(b0, b1, device=dev, dtype=torch.int64).unsqueeze(0)
            c1 = torch.arange(self.start + r0, self.start + r1, device=dev, dtype=torch.int64).unsqueeze(1)
            _uniforms_tile(ws, _philox_tile(ws, c0, c1, self.c2, self.c3, self.keys))
        e0, e1 = 2 * b0, min(elements, 2 * b1)
        dest = flat[r0:r1, e0:e1]
        _box_muller_tile(ws, dest[:, 0::2], dest[:, 1::2])

    def _family_tile(self, ws: _Workspace, b0: int, b1: int, r0: int, r1: int) -> None:
        """A non-Gaussian family's tile: two floats per block (kernel or torch rule), then its transform."""
        draw, (v0, v1, _) = self.draw, ws.floats
        if self.kernel is not None:
            self.kernel(v0.numpy(), v1.numpy(), draw.kind, b0, self.start + r0, self.c2, self.c3, self.cpu_keys)
        else:
            dev = self.flat.device
            c0 = torch.arange(b0, b1, device=dev, dtype=torch.int64).unsqueeze(0)
            c1 = torch.arange(self.start + r0, self.start + r1, device=dev, dtype=torch.int64).unsqueeze(1)
            draw.pairs(_philox_tile(ws, c0, c1, self.c2, self.c3, self.keys), v0, v1)
        dest = self.flat[r0:r1, 2 * b0:min(self.flat.shape[1], 2 * b1)]
        odd = dest[:, 1::2]
        draw.finish(v0, dest[:, 0::2])
        draw.finish(v1[:, :odd.shape[1]], odd)


def normal(key: tuple[int, int, int, int], start: int, count: int, shape: tuple[int, ...],
           device: torch.device | str = "cpu") -> torch.Tensor:
    """Draws start .. start+count-1 of the stream ``key`` as a new float32 tensor [count, *shape]."""
    out = torch.empty((count, *shape), dtype=torch.float32, device=device)
    return normal_(out, key, start)


def draw(key: tuple[int, int, int, int], start: int, count: int, shape: tuple[int, ...], family: str = "gaussian",
         device: torch.device | str = "cpu") -> torch.Tensor:
    """Draws start .. start+count-1 of the stream ``key``, of the noise ``family``, as a new float32
    tensor [count, *shape] (unit variance per element)."""
    out = torch.empty((count, *shape), dtype=torch.float32, device=device)
    return draw_(out, key, start, family)
