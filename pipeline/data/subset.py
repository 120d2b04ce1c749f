"""A seeded random subset of the candidate inputs (``--subset N --subset-seed S``); numpy only, no torch.

**The rule.** Every dataset index i gets a priority: the 128-bit output of Philox4x32-10 (Salmon,
Moraes, Dror & Shaw, SC 2011) at the counter (i mod 2^32, floor(i / 2^32), c2, c3) under the key
(k0, k1), where (k0, k1, c2, c3) are the little-endian 32-bit words of blake2b-128 of
``"rscert-subset\\x1f{S}"``. Of the M candidates (the inputs ``--skip/--start/--end`` select), the
subset keeps the N of smallest priority, compared as unsigned 128-bit integers (first word most
significant); all M if N >= M.

**What follows.**

* *A pure function of (S, i).* An input's priority depends on nothing else, so the subset does not
  depend on batches, workers, unit size, executor, order or restarts; only on S, N and which indices
  are candidates.
* *No ties.* For a fixed key Philox is a bijection of the 128-bit counter, and distinct indices below
  2^64 are distinct counters, so distinct candidates have distinct priorities: "the N smallest" is one
  well-defined set.
* *Nested.* The subset of N is the first N of one order of the candidates, so the same S with a larger
  N keeps a superset: widening ``--subset`` resumes input by input like widening ``--end`` (the inputs
  already committed are not recomputed). A different candidate set (another ``--end``, more shards)
  is another draw: the N smallest among more candidates.
* *Uniform without replacement.* Were the priorities independent and continuous, the ranks of the M
  candidates would be a uniformly random permutation (exchangeability), so every N-subset would be kept
  with probability 1 / C(M, N) and each candidate with probability N / M. Philox's outputs stand in for
  such priorities (it passes TestU01's BigCrush); tests/test_subset.py checks the inclusion frequencies
  over many seeds against N / M.
* *Apart from the noise.* The key is hashed from a text no noise stream hashes
  (:func:`rscert.sampling.noise.stream` hashes ``"{seed}\\x1f{id}\\x1f{phase}"``), so which inputs are
  kept reuses no Philox word of any input's noise, whatever ``--seed`` and ``--subset-seed`` are.
"""

from __future__ import annotations

import hashlib

import numpy as np

from rscert.constants import MAX_SUBSET_SEED
from rscert.sampling.philox import MASK32, philox4x32

DOMAIN = "rscert-subset"


def subset_key(seed: int) -> tuple[int, int, int, int]:
    """(k0, k1, c2, c3): the Philox key and upper counter words of subset seed ``seed``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SUBSET_SEED:
        raise ValueError(f"subset_seed: must be an integer in [0, 2^64), got {seed!r}")
    digest = hashlib.blake2b(f"{DOMAIN}\x1f{seed}".encode(), digest_size=16).digest()
    k0, k1, c2, c3 = (int.from_bytes(digest[4 * i : 4 * i + 4], "little") for i in range(4))
    return k0, k1, c2, c3


def priorities(seed: int, indices: np.ndarray) -> tuple[np.ndarray, ...]:
    """The four 32-bit words (most significant first, int64 arrays) of each index's priority."""
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size and idx.min() < 0:
        raise ValueError("dataset indices must be >= 0")
    k0, k1, c2, c3 = subset_key(seed)
    return philox4x32(idx & MASK32, idx >> 32, np.full_like(idx, c2), np.full_like(idx, c3), k0, k1)


def draw_subset(candidates: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The ``n`` candidates (distinct dataset indices) of smallest priority under ``seed``, ascending;
    every candidate if ``n`` is at least their number."""
    if n < 1:
        raise ValueError(f"subset: must be at least 1, got {n}")
    values = np.unique(np.asarray(candidates, dtype=np.int64))
    if n >= len(values):
        return values
    w0, w1, w2, w3 = priorities(seed, values)
    order = np.lexsort((w3, w2, w1, w0))  # the last key is the primary one
    return np.sort(values[order[:n]])
