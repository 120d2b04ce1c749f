"""Votes of the base classifier under noise, on one device (torch): the counter-based Philox noise
(:mod:`.philox`, :mod:`.noise`, :mod:`.noise_cpu`), the batched sampler (:mod:`.sampler`), and CERTIFY /
PREDICT over a batch of inputs (:mod:`.certify`)."""

from rscert.sampling.certify import SmoothingParams, certify, certify_sequential, predict
from rscert.sampling.sampler import Sampler, SamplerOptions

__all__ = ["Sampler", "SamplerOptions", "SmoothingParams", "certify", "certify_sequential", "predict"]
