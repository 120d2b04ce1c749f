"""rscert: certify image classifiers with randomized smoothing (Cohen, Rosenfeld & Kolter, 2019)."""

__version__ = "0.1.0"
