"""The papers' equations in numpy/scipy (no torch, no Ray): Clopper-Pearson bounds, the Gaussian radius,
CERTIFY and PREDICT from vote counts (:mod:`.smoothing`), confidence sequences for sequential sampling
(:mod:`.sequential`), and corrections for wrong certificates over a test set (:mod:`.corrections`)."""

from rscert.stats.sequential import look_schedule, max_certifiable_radius
from rscert.stats.smoothing import (
    ABSTAIN,
    certify_from_counts,
    clopper_pearson_lower,
    clopper_pearson_upper,
    gaussian_radius,
    predict_from_counts,
)

__all__ = ["ABSTAIN", "certify_from_counts", "clopper_pearson_lower", "clopper_pearson_upper", "gaussian_radius",
           "look_schedule", "max_certifiable_radius", "predict_from_counts"]
