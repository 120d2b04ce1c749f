"""The model facts a job needs before it plans: what identifies the model (and denoiser) for the result
fingerprint, the inputs' shape, the class count, and warnings about its settings (no Ray here).

The local executor computes them in the driver, which keeps the loaded model for its worker. The Ray
executor computes them in a Ray task (:func:`rscert.run.ray_facts.remote_model_facts`) and receives
only :class:`ModelFacts`, so the driver never imports torch (importing it alone takes about 600 MB).
torch is imported inside :func:`load_facts`, where computing happens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rscert.config.certify import CertifyConfig
from rscert.errors import ConfigError, ModelError
from rscert.stats.families import family
from rscert.stats.smoothing import smallest_useful_n
from rscert.store.storage import StorageError

if TYPE_CHECKING:
    from rscert.models.denoisers import LoadedDenoiser
    from rscert.models.load import LoadedModel


@dataclass
class ModelFacts:
    """What the driver keeps of the model: plain values, small and picklable."""

    facts: dict[str, Any]  # the manifest's "model": spec, checkpoint and weights hashes, ... (+ "denoiser")
    input_shape: tuple[int, ...] | None  # of the first decodable input of the first shard (None: none decoded)
    num_classes: int | None  # as the rows will carry it: configured, else the model's output width
    warnings: list[str] = field(default_factory=list)

    @property
    def dim(self) -> int | None:
        return None if self.input_shape is None else math.prod(self.input_shape)

    @property
    def denoiser_facts(self) -> dict[str, Any] | None:
        """The denoiser's facts (denoised smoothing), or None."""
        return self.facts.get("denoiser")

    @property
    def denoiser_sha256(self) -> str | None:
        return None if self.denoiser_facts is None else self.denoiser_facts["weights_sha256"]


def setting_warnings(config: CertifyConfig, spec: str, normalize: str) -> list[str]:
    """Settings that are valid but probably not what the user meant, said before anything runs."""
    warnings = []
    if config.normalize == "auto" and normalize == "none" and ":" in spec:
        warnings.append(
            f"warning: --normalize auto gives no normalisation for the factory {spec!r} (rscert cannot see "
            "what it expects): inputs reach it in [0, 1]. Pass --normalize imagenet or cifar if the network "
            "expects normalised inputs, or --normalize none to say that it does not.")
    least = smallest_useful_n(config.alpha, config.mode)
    if config.n < least:
        what = "predict (every input abstains)" if config.mode == "predict" else "certify any input"
        warnings.append(f"warning: --n {config.n} cannot {what} at alpha {config.alpha:g}, whatever the model "
                        f"does; the smallest n that can is {least}")
    return warnings


def load_facts(config: CertifyConfig, shard: str) -> tuple[ModelFacts, LoadedModel, LoadedDenoiser | None]:
    """Load the model (and denoiser), probe it on ``shard``'s first inputs (a wrong ``--num-classes`` is
    refused here), and return its facts with what was loaded. Raises :class:`ModelError` or
    :class:`ConfigError` naming the setting at fault."""
    from rscert.models.denoisers import Denoised, load_denoiser
    from rscert.models.load import load_model
    from rscert.run.probe import class_count, probe

    options = config.storage_options
    loaded = load_model(config.model, config.checkpoint, config.num_classes, config.normalize,
                        config.trust_checkpoint, config.random_init, storage_options=options,
                        model_args=config.model_args, weights_from_factory=config.weights_from_factory)
    denoiser, base = None, loaded.model
    if config.denoiser is not None:  # denoised smoothing: the base classifier is f∘d
        denoiser = load_denoiser(config.denoiser, config.sigma, config.trust_checkpoint, options,
                                 output_size=loaded.input_size)
        base = Denoised(denoiser.module, loaded.model)
    # the model's output width and the inputs' shape, before anything is written
    input_shape = probe(base, shard, config.preprocess(), loaded.num_classes, storage_options=options)
    facts = {"spec": loaded.spec, "checkpoint": loaded.checkpoint, "checkpoint_sha256": loaded.checkpoint_sha256,
             "num_classes": loaded.num_classes, "normalize": loaded.normalize,
             "weights_sha256": loaded.weights_sha256, "weights": loaded.weights}
    if denoiser is not None:
        facts["denoiser"] = denoiser.facts()
    num_classes = loaded.num_classes  # as the rows will carry it (the facts keep what was configured)
    if num_classes is None and input_shape is not None:
        num_classes = class_count(base, input_shape)
    out = ModelFacts(facts, input_shape, num_classes, setting_warnings(config, loaded.spec, loaded.normalize))
    check_dim(config, out)
    return out, loaded, denoiser


def check_dim(config: CertifyConfig, facts: ModelFacts) -> None:
    if config.sampling == "sequential" and facts.dim is None and family(config.noise).needs_dim(config.norm):
        raise ConfigError("radii", f"the {config.norm} radii of {config.noise} noise depend on the inputs' dimension, "
                                   "and no input of the first shard decoded to measure it")


def facts_or_error(config: dict, shard: str) -> ModelFacts | tuple[str, str, str]:
    """:func:`load_facts` for another process (a Ray task): the facts, or a model, configuration or storage
    error as ``(kind, field, message)`` (exceptions whose constructor takes a field do not survive pickling), for
    :func:`raise_error` on the driver."""
    try:
        return load_facts(CertifyConfig(**config), shard)[0]
    except ConfigError as exc:
        return "config", exc.field, str(exc).removeprefix(f"{exc.field}: ")
    except ModelError as exc:
        return "model", "", str(exc)
    except StorageError as exc:  # a checkpoint on an object store that cannot be read
        return "storage", "", str(exc)


def raise_error(error: tuple[str, str, str]) -> None:
    """Raise the error :func:`facts_or_error` returned, as the driver would have raised it."""
    kind, name, message = error
    if kind == "config":
        raise ConfigError(name, message)
    if kind == "storage":
        raise StorageError(message)
    raise ModelError(message)
