"""Constants shared by the torch-free modules (configuration, CLI) and the computing ones.

Kept here, with no torch import, so that ``rscert --help``, configuration checks and the analysis
never load torch.
"""

from __future__ import annotations

NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "none": None,
}
"""Per-channel (mean, std) that the model applies to [0, 1] inputs, by name."""

TIMM_NORMALIZATION = "timm"
"""The ``normalize`` value of a ``timm:NAME`` model's own mean and std (its ``pretrained_cfg``)."""

NOISE_VERSION = "philox4x32-10/box-muller-f32/v2"
"""Names the noise generator (pipeline/sampling/noise.py); part of a run's fingerprint. Changing the algorithm
changes it."""

NOISE = "gaussian"
"""The default noise family (``--noise``; the families are in rscert.stats.families)."""

LATTICE_NOISE = "discrete-gaussian"
"""The family sound in floating point (Voracek & Hein 2023): the Gaussian rounded to the 8-bit grid, drawn
exactly around 8-bit inputs (rscert.stats.discrete_gaussian); its rows certify without assuming anything
of f, where the Gaussian's assume that f does not exploit the floating-point representation of its
noisy input (README, "What is certified")."""
DISCRETE_NOISE_VERSION = "philox4x32-10/discrete-gaussian-255/inverse-cdf-63/v1"
"""Names the generator of :data:`LATTICE_NOISE` (pipeline/sampling/discrete_noise.py); part of a run's
fingerprint."""

BOUNDS = ("pa", "top2")
"""``--bound``: how the radius is bounded. pa: from a lower bound on pA alone (pB <= 1 - pA); top2: from
bounds on pA and on the runner-up's pB, alpha/2 each (Theorem 1 as stated; rscert.stats.pair)."""
VOTES = ("hard", "soft")
"""``--vote``: what is smoothed. hard: the base classifier's votes (argmax of its logits); soft: its
softmax(logits / T) scores (Salman et al. 2019; rscert.stats.pair)."""

PRESET_SIZES: dict[str, dict[str, int]] = {"imagenet": {"resize": 256, "crop": 224}}
"""What each input preset resizes (short side) and centre-crops to; the others keep the image's size."""
DEFAULT_INTERPOLATION = "bilinear"  # torchvision's Resize default

DEFAULT_SUBSET_SEED = 0
"""--subset's seed when none is given: fixed, so that a subset is reproducible from the command alone."""
MAX_SUBSET_SEED = (1 << 64) - 1
"""The largest --subset-seed (rscert.data.subset hashes it into its Philox key)."""
