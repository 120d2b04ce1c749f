"""A seeded random subset of the candidate inputs (``--subset N --subset-seed S``); numpy only, no torch.

**The rule.** Every dataset index i gets a 64-bit priority: the i-th output of SplitMix64 (Steele, Lea &
Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014; Vigna's reference code) started
from the state b(S), the first 8 bytes (little-endian) of blake2b of ``"rscert-subset\x1f{S}"``:
z_i = b(S) + (i + 1) * 0x9E3779B97F4A7C15 (mod 2^64), priority_i = mix(z_i) with Stafford's
"mix13" finalizer. Of the M candidates (the inputs ``--skip/--start/--end`` select), the subset keeps
the N of smallest priority; all M if N >= M.

**What follows.**

* *A pure function of (S, i).* An input's priority depends on nothing else, so the subset does not
  depend on batches, workers, unit size, executor, order or restarts; only on S, N and which indices
  are candidates. Computed for all candidates at once with numpy (wrapping uint64 arithmetic).
* *No ties.* The increment is odd, so distinct indices below 2^64 give distinct z_i, and mix is a
  bijection of 64-bit words (each xor-shift and each multiplication by an odd constant is invertible):
  distinct candidates have distinct priorities, and "the N smallest" is one well-defined set.
* *Nested.* The subset of N is the first N of one order of the candidates, so the same S with a larger
  N keeps a superset: widening ``--subset`` resumes input by input like widening ``--end`` (the inputs
  already committed are not recomputed). A different candidate set (another ``--end``, more shards)
  is another draw: the N smallest among more candidates.
* *Uniform without replacement.* Were the priorities independent and continuous, the ranks of the M
  candidates would be a uniformly random permutation (exchangeability), so every N-subset would be kept
  with probability 1 / C(M, N) and each candidate with probability N / M. SplitMix64's outputs stand in
  for such priorities (they pass TestU01's BigCrush); tests/test_subset.py checks the inclusion
  frequencies over many seeds against N / M and the distribution of subsets against uniform.
* *Apart from the noise.* The noise is Philox4x32-10 keyed by another hash (:mod:`rscert.sampling.noise`):
  which inputs are kept does not reuse the noise's random words, whatever ``--seed`` and
  ``--subset-seed`` are.
"""

from __future__ import annotations

import hashlib

import numpy as np

from rscert.constants import MAX_SUBSET_SEED

DOMAIN = "rscert-subset"
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
"""SplitMix64's increment (odd: 2^64 / golden ratio)."""
MIX = (np.uint64(30), np.uint64(0xBF58476D1CE4E5B9), np.uint64(27), np.uint64(0x94D049BB133111EB), np.uint64(31))
"""Stafford's mix13 shifts and multipliers (SplitMix64's finalizer)."""


def subset_state(seed: int) -> int:
    """b(S): SplitMix64's starting state for subset seed ``seed``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SUBSET_SEED:
        raise ValueError(f"subset_seed: must be an integer in [0, 2^64), got {seed!r}")
    return int.from_bytes(hashlib.blake2b(f"{DOMAIN}\x1f{seed}".encode(), digest_size=8).digest(), "little")


def splitmix64(state: int, indices: np.ndarray) -> np.ndarray:
    """The ``indices``-th outputs (0-based) of SplitMix64 started from ``state``, as uint64."""
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size and idx.min() < 0:
        raise ValueError("dataset indices must be >= 0")
    s1, m1, s2, m2, s3 = MIX
    with np.errstate(over="ignore"):  # arithmetic mod 2^64 is the point
        z = np.uint64(state) + (idx.astype(np.uint64) + np.uint64(1)) * GOLDEN
        z = (z ^ (z >> s1)) * m1
        z = (z ^ (z >> s2)) * m2
    return z ^ (z >> s3)


def priorities(seed: int, indices: np.ndarray) -> np.ndarray:
    """Each dataset index's priority under subset seed ``seed`` (uint64)."""
    return splitmix64(subset_state(seed), indices)


def draw_subset(candidates: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The ``n`` candidates (distinct dataset indices) of smallest priority under ``seed``, ascending;
    every candidate if ``n`` is at least their number."""
    if n < 1:
        raise ValueError(f"subset: must be at least 1, got {n}")
    values = np.asarray(candidates, dtype=np.int64)
    if not np.all(values[1:] > values[:-1]):  # the planner's are ascending and distinct already
        values = np.unique(values)
    if n >= len(values):
        return values
    kept = np.argpartition(priorities(seed, values), n - 1)[:n]  # priorities are distinct: one set
    return np.sort(values[kept])
