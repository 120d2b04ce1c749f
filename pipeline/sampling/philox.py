"""Philox4x32-10's constants and key schedule, one home for the torch rounds (:mod:`.noise`) and the
numba kernel (:mod:`.noise_cpu`): pure Python, no torch, no numba.

Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3" (SC 2011): ten rounds of
(hi, lo) = M * c with the round key bumped by the Weyl increments (W0, W1) between rounds.
"""

from __future__ import annotations

import math

MASK32 = 0xFFFFFFFF
M0, M1 = 0xD2511F53, 0xCD9E8D57
"""Philox4x32 multipliers."""
W0, W1 = 0x9E3779B9, 0xBB67AE85
"""Weyl key increments."""
ROUNDS = 10
TWO_POW_M53 = 2.0**-53
"""Scale of the 53-bit integer that makes Box-Muller's u1."""
TWO_POW_M24 = 2.0**-24
"""Scale of the uniform family's 24-bit grid (rscert.sampling.draws)."""
GRID_OFFSET = 1 - (1 << 24)
"""2k + 1 - 2^24 maps k in [0, 2^24) to the odd integers in (-2^24, 2^24): the uniform family's grid."""
LAPLACE_PAIRS, UNIFORM_PAIRS = 1, 2
"""The pair rules of rscert.sampling.draws, as the compiled kernel (noise_cpu.pairs_tile) names them."""
THETA_STEP = 2 * math.pi * 2.0**-24
"""Box-Muller's angle per unit of the 24-bit integer; applied as the float32 fl32(2 pi 2^-24)."""


def round_keys(k0: int, k1: int) -> list[tuple[int, int]]:
    """The ROUNDS round keys of key (k0, k1): (k0, k1), then each bumped by (W0, W1) mod 2^32."""
    keys = [(k0, k1)]
    for _ in range(ROUNDS - 1):
        k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
        keys.append((k0, k1))
    return keys
