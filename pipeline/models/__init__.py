"""The base classifier f: torchvision, published-checkpoint, rscert and ``module:factory`` models
(:mod:`.load`), and rscert's own architectures (:mod:`.archs`)."""

from rscert.models.load import LoadedModel, ModelError, load_model

__all__ = ["LoadedModel", "ModelError", "load_model"]
