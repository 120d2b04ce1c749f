"""The noise of the families other than the Gaussian, from the Philox words of the noise module (torch).

Every family shares the Gaussian's stream and counters (:mod:`rscert.sampling.noise`): block b of draw
j, the Philox4x32-10 output (w0, w1, w2, w3) of counter (b, j, c2, c3), gives elements 2b and 2b+1 of
that draw, so the guarantees stated there (every draw distinct within an input; noise a pure function
of (seed, id, phase, draw), whatever the call, batch, device or worker) hold for every family. A family
forms two float32 values (v0, v1) per block from the words, by exact integer steps and one correctly
rounded float32 conversion (so the compiled CPU kernel, :func:`rscert.sampling.noise_cpu.pairs_tile`,
gives the same floats bit for bit), then turns each into one element of unit variance in float32;
the sampler multiplies by sigma, as for the Gaussian.

* **laplace** (``philox4x32-10/laplace-f32/v1``): for h = 0, 1, with (a, c) = (w0, w1) or (w2, w3):
  v_h = s fl32(a 2^21 + floor(c / 2^11) + 1) 2^-53, s = -1 if bit 0 of c is set, else +1: a 53-bit
  uniform on [2^-53, 1] (the Gaussian's u1) with an independent sign. The element is
  s (-ln |v_h|) / sqrt(2): -ln U ~ Exp(1), so the element is Laplace with scale 1/sqrt(2), variance 1,
  and |element| <= 53 ln(2) / sqrt(2) ~ 26 (probability 2^-53 beyond). As for the Gaussian's u1, the
  float32 rounding makes |v| = 1, hence the element 0, with probability about 2^-25 (total variation
  2^-25 from the exact law).
* **uniform** (``philox4x32-10/uniform-grid24-f32/v1``): v_h = (2 floor(a / 2^8) + 1 - 2^24) 2^-24
  with a = w0 or w2: the 2^24 odd multiples of 2^-24 in (-1, 1), equally likely (exact in float32);
  the element is fl32(sqrt 3) v_h. A 24-bit grid on [-sqrt 3, sqrt 3]: its distribution function is
  within 2^-24 of U(-sqrt 3, sqrt 3)'s everywhere, and its support lies inside the continuous one's.

What is certified is the smoothed classifier under the exact law (docs/families.md); these floating-point
draws approximate it as closely as the Gaussian's do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rscert.sampling.philox import GRID_OFFSET, LAPLACE_PAIRS, TWO_POW_M24, TWO_POW_M53, UNIFORM_PAIRS

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_SQRT3 = math.sqrt(3.0)

Pairs = Callable[[list[torch.Tensor], torch.Tensor, torch.Tensor], None]
"""(words w0..w3 as int64 tensors, modified in place; v0 out; v1 out) -> None: the block's two floats."""
Finish = Callable[[torch.Tensor, torch.Tensor], None]
"""(v, destination view) -> None: the elements of unit variance, in float32 (v may be overwritten)."""


@dataclass(frozen=True)
class Draw:
    """How one family's elements are made from a block's words: ``pairs`` (exact, kernel-compatible),
    then ``finish`` (float32 arithmetic, torch on every path); ``kind`` names the kernel's pair rule."""

    kind: int
    pairs: Pairs
    finish: Finish


def _laplace_pairs(words: list[torch.Tensor], v0: torch.Tensor, v1: torch.Tensor) -> None:
    for a, c, v in ((words[0], words[1], v0), (words[2], words[3], v1)):
        sign = c.bitwise_and(1).mul_(-2).add_(1)  # +1 or -1 from bit 0 of c
        a.bitwise_left_shift_(21).bitwise_or_(c.bitwise_right_shift_(11)).add_(1)  # [1, 2^53]
        v.copy_(a).mul_(TWO_POW_M53).mul_(sign)  # rounded to float32 once; the products are exact


def _laplace_finish(v: torch.Tensor, dest: torch.Tensor) -> None:
    sign = torch.sign(v)
    v.abs_().log_().mul_(-_INV_SQRT2)  # -ln|v| / sqrt 2 >= 0
    torch.mul(v, sign, out=dest)


def _uniform_pairs(words: list[torch.Tensor], v0: torch.Tensor, v1: torch.Tensor) -> None:
    for a, v in ((words[0], v0), (words[2], v1)):
        a.bitwise_right_shift_(8).mul_(2).add_(GRID_OFFSET)  # odd integers in (-2^24, 2^24): exact in float32
        v.copy_(a).mul_(TWO_POW_M24)


def _uniform_finish(v: torch.Tensor, dest: torch.Tensor) -> None:
    torch.mul(v, _SQRT3, out=dest)


DRAWS: dict[str, Draw] = {
    "laplace": Draw(LAPLACE_PAIRS, _laplace_pairs, _laplace_finish),
    "uniform": Draw(UNIFORM_PAIRS, _uniform_pairs, _uniform_finish),
}
"""The draws of the non-Gaussian families, by the family's name (rscert.stats.families.FAMILIES)."""


def unit_noise_like(x: torch.Tensor, family: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """i.i.d. noise of ``family`` at unit variance, shaped like ``x``, from torch's generator (``generator``
    or the global one): for noise-augmented training (rscert train --noise), where no certificate
    depends on the draws and resuming only needs torch's RNG state. Certification never uses this: its
    noise is the counter-based stream above. ``discrete-gaussian`` trains with the continuous Gaussian:
    its rounding to the 8-bit grid moves no pixel by more than half a level, which no training resolves,
    and the certificate never rests on training noise."""
    if family in ("gaussian", "discrete-gaussian"):
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if family == "uniform":
        return u.mul_(2.0).sub_(1.0).mul_(_SQRT3)
    if family == "laplace":  # inverse distribution function of Laplace(0, 1/sqrt 2) at u - 1/2
        v = u.sub_(0.5)
        magnitude = torch.log1p(-(2.0 * v.abs()).clamp_(max=1.0 - 2.0**-24)).mul_(-_INV_SQRT2)
        return magnitude.mul_(torch.sign(v))
    raise ValueError(f"noise: no training draw for family {family!r}; families: gaussian, {', '.join(DRAWS)}")
