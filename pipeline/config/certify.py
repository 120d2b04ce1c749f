"""The certify job's configuration: one pydantic model for the YAML file and the command line.

Command-line values override the file. Every bad value fails before any compute, with a message
that names the field.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rscert.config.files import ConfigFileError, load_yaml
from rscert.constants import (
    BOUNDS,
    DEFAULT_INTERPOLATION,
    DEFAULT_SUBSET_SEED,
    MAX_SUBSET_SEED,
    NOISE,
    NORMALIZATIONS,
    PRESET_SIZES,
    TIMM_NORMALIZATION,
    VOTES,
)
from rscert.errors import ConfigError
from rscert.stats.families import formula, resolve
from rscert.stats.pair import PairFormula, check_temperature
from rscert.stats.sequential import check_stop_radii, default_stop_radii, look_schedule

FORMAT_VERSION = 1


class CertifyConfig(BaseModel):
    """Settings of ``rscert certify`` (see docs/configuration.md for every field)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["certify", "predict"] = Field("certify",
        description="certify: CERTIFY's certified radii; predict: PREDICT's predictions (set by the subcommand)")
    data: str | list[str] = Field(description="shard spec(s): paths, globs, brace ranges, fsspec URLs, pipe:")
    out: str = Field(description="output folder: local path or fsspec URL")
    storage_options: dict[str, Any] | None = Field(None,
        description="fsspec storage options for --data, --out and --checkpoint URLs (JSON on the command line)")
    model: str | None = Field(None, description="torchvision name, rscert arch, or package.module:factory")
    checkpoint: str | None = Field(None,
        description="model weights: plain state dict, published {arch, state_dict} format, or rscert train's")
    denoiser: str | None = Field(None,
        description="denoised smoothing: a denoiser in front of the classifier, a checkpoint (published {arch, "
                    "state_dict} format: DnCNN, MemNet), package.module:factory, or diffusion:FOLDER (a diffusers "
                    "UNet2DModel + scheduler, one-shot); see docs/denoised.md")
    trust_checkpoint: bool = Field(False, description="allow checkpoints that need arbitrary code to unpickle")
    random_init: bool = Field(False,
        description="allow a model without a checkpoint (seeded random weights; for tests and benchmarks only)")
    weights_from_factory: bool = Field(False,
        description="the package.module:factory loads its own trained weights: certify them as built (recorded as "
                    "weights: factory; their SHA-256 is checked on every worker)")
    model_args: dict[str, Any] | None = Field(None,
        description="keyword arguments for a package.module:factory (JSON on the command line)")
    num_classes: int | None = Field(None, ge=1,
        description="class count; default: from the checkpoint or the model's output")
    normalize: str = Field("auto", description="imagenet | cifar | none | auto (from the checkpoint or architecture)")
    preset: Literal["imagenet", "cifar", "none"] = Field("none",
        description="input preprocessing to [0, 1]: imagenet (resize 256, crop 224), cifar, none")
    resize: int | None = Field(None, ge=1,
        description="resize images' short side to this (default: the preset's: 256 for imagenet, else none)")
    crop: int | None = Field(None, ge=1,
        description="centre-crop images to this square (default: the preset's: 224 for imagenet, else none)")
    interpolation: Literal["bilinear", "bicubic", "nearest", "lanczos", "box", "hamming"] | None = Field(None,
        description="resampling filter of --resize (default: bilinear, torchvision's)")
    sigma: float = Field(gt=0, allow_inf_nan=False,
        description="noise standard deviation per coordinate in [0, 1] pixel units, for every --noise family")
    noise: str = Field(NOISE, description="noise family: gaussian | discrete-gaussian | laplace | uniform "
                       "(docs/families.md); gaussian assumes f does not exploit the floating-point "
                       "representation of its noisy input; discrete-gaussian (8-bit inputs only, others fail "
                       "with off_grid) is sound in floating point")
    norm: Literal["l1", "l2", "linf"] | None = Field(None,
        description="norm of the certified radii (default: the family's own: gaussian l2, laplace l1, uniform l1; "
                    "other norms are converted soundly, docs/families.md)")
    bound: str = Field(BOUNDS[0], description="how the radius is bounded: pa (from a lower bound on pA alone) or "
                       "top2 (Theorem 1 with bounds on pA and on the runner-up's pB, alpha/2 each; certify only; "
                       "docs/bounds.md)")
    vote: str = Field(VOTES[0], description="what is smoothed: hard (the base classifier's votes) or soft (its "
                      "softmax(logits / temperature) scores: the smoothed soft classifier, Salman et al. 2019)")
    temperature: float | None = Field(None,
        description="softmax temperature T of --vote soft (default 1; refused with hard votes)")
    n0: int = Field(100, ge=1, description="selection samples per input")
    n: int = Field(100_000, ge=1, description="estimation samples per input")
    alpha: float = Field(0.001, gt=0, lt=1, description="one-sided failure probability of each certificate")
    sampling: Literal["fixed", "sequential"] = Field("fixed",
        description="fixed: n estimation samples per input; sequential: stop once the --radii cell is settled")
    radii: list[float] | None = Field(None,
        description="radii of the certified-accuracy table: sequential sampling stops once an input's cell is known "
                    "(default: 0, sigma/2, sigma, ... up to what the cap --n can certify; see docs/sequential.md)")
    seed: int | None = Field(None, ge=0,
        description="noise seed; noise is a function of (seed, dataset index, phase, draw). Default: a fresh random "
                    "seed for a new output folder, recorded in its manifest (a resume reuses it)")
    batch_size: int = Field(400, ge=1, description="noisy samples per forward pass (packed across inputs)")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32",
        description="forward precision of the base classifier (cast after the fp32 noise, then autocast)")
    channels_last: bool = Field(False, description="channels-last memory format (faster convolutions on GPUs)")
    compile: bool = Field(False, description="torch.compile the model once per worker")
    compile_noise: bool = Field(False, description="torch.compile the Gaussian generator's integer part into one "
                                "kernel (the same noise bit for bit; recommended on GPUs, where it is about 10x "
                                "faster; needs Triton and a C compiler; other families draw eagerly)")
    clamp: bool = Field(False, description="clamp noisy inputs to [0, 1] (off in the published code)")
    unit_size: int = Field(32, ge=1, description="inputs per work unit (one Parquet file each)")
    skip: int = Field(1, ge=1, description="select dataset indices i with i % skip == 0")
    start: int = Field(0, ge=0, description="first dataset index considered")
    end: int | None = Field(None, ge=0,
        description="dataset indices below this (default: all); the published scripts' --max")
    max: int | None = Field(None, ge=1,
        description="at most this many selected inputs (a count, unlike the published --max: use --end)")
    subset: int | None = Field(None, ge=1,
        description="keep N of the inputs --skip/--start/--end select, drawn uniformly at random without "
                    "replacement by --subset-seed (a pure function of the seed and the dataset index: the same "
                    "seed with a larger N keeps a superset, so widening resumes like widening --end); all of them "
                    "if N is larger. Not with --max. The draw needs every candidate, so planning indexes every "
                    "shard before the first unit starts (without --subset, units start as shards are indexed)")
    subset_seed: int | None = Field(None, ge=0, le=MAX_SUBSET_SEED,
        description="seed of the --subset draw (default: 0 with --subset; refused without it); recorded in the "
                    "selection record and the manifest, apart from the noise --seed")
    dataset: str | None = Field(None, description="dataset name for the rows (default: from the shard names)")
    split: str = Field("test", description="split name for the rows")
    device: str | None = Field(None, description="torch device (default: cuda if available, else cpu)")
    executor: Literal["local", "ray"] = Field("local", description="local (this process) or ray")
    ray_address: str | None = Field(None, description="Ray cluster to join; default RAY_ADDRESS, else a new local Ray")
    shared_filesystem: bool = Field(False, description="the local --out path is shared by every Ray node")
    min_actors: int = Field(1, ge=1,
        description="actors requested from the start even if no node can place them yet: they wait, and their "
                    "demand is what makes an autoscaler add nodes")
    max_actors: int | None = Field(None, ge=1,
        description="upper bound of the pool (default: none); between the two bounds the pool follows the "
                    "cluster: one actor per GPU (else per cpus_per_actor CPUs) of the nodes alive, growing as "
                    "nodes join")
    num_actors: int | None = Field(None, ge=1,
        description="deprecated: a fixed pool, the same as min_actors = max_actors = this")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs reserved per actor (its torch threads)")
    gpus_per_actor: float | None = Field(None, ge=0, description="GPUs per actor (default: 1 if the cluster has GPUs)")
    max_in_flight: int = Field(2, ge=1, description=(
        "most units on one actor at a time (one running, the rest queued behind it); every idle actor gets a "
        "unit before any gets a second, and a queued one only while the queue holds more units than the actors "
        "that will ask for one"))
    max_unit_tries: int = Field(3, ge=1, description="tries before a failing unit is given up and reported")
    max_actor_restarts: int = Field(8, ge=0, description="replacements for lost actors over the job")
    actor_start_timeout: float = Field(900.0, gt=0,
        description="seconds units may wait with no actor ready (waiting for nodes, or loading) before they fail")

    @field_validator("normalize")
    @classmethod
    def _normalize(cls, value: str) -> str:
        if value != "auto" and value != TIMM_NORMALIZATION and value not in NORMALIZATIONS:
            raise ValueError(f"must be 'auto', one of {sorted(NORMALIZATIONS)} or {TIMM_NORMALIZATION!r} (timm models)")
        return value

    @field_validator("data")
    @classmethod
    def _data(cls, value: str | list[str]) -> str | list[str]:
        if (isinstance(value, str) and not value.strip()) or (isinstance(value, list) and not value):
            raise ValueError("no shards given")
        return value

    @model_validator(mode="after")
    def _model_given(self) -> CertifyConfig:
        if self.model is None and self.checkpoint is None:
            raise ValueError("model: give --model or a --checkpoint that records its arch")
        if self.mode == "predict" and self.sampling != "fixed":
            raise ValueError("sampling: PREDICT draws n samples per input; sequential sampling is for certify")
        if self.resize is not None and self.crop is not None and self.crop > self.resize:
            raise ValueError(f"crop: {self.crop} is larger than --resize {self.resize}: the crop would pad with zeros")
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"end: must be greater than start ({self.start}), got {self.end}")
        if self.subset is not None and self.max is not None:
            raise ValueError(f"subset: --subset {self.subset} and --max {self.max} are both counts of inputs to keep "
                             "(a random draw and the first ones): give one of them")
        if self.subset is None and self.subset_seed is not None:
            raise ValueError("subset_seed: seeds the --subset draw; without --subset there is none (give --subset N)")
        if self.subset is not None and self.subset_seed is None:
            self.subset_seed = DEFAULT_SUBSET_SEED
        if self.num_actors is not None:
            given = sorted({"min_actors", "max_actors"} & self.model_fields_set)
            if given:
                raise ValueError(f"num_actors: deprecated; give it or {' and '.join(given)}, not both")
            self.min_actors = self.max_actors = self.num_actors  # the dump (sent to actors) keeps min/max only
            self.num_actors = None
        if self.max_actors is not None and self.max_actors < self.min_actors:
            raise ValueError(f"max_actors: must be at least min_actors ({self.min_actors}), got {self.max_actors}")
        try:
            fam, self.norm = resolve(self.noise, self.norm)
            if self.bound not in BOUNDS:
                raise ConfigError("bound", f"must be one of {', '.join(BOUNDS)}, got {self.bound!r}")
            if self.vote not in VOTES:
                raise ConfigError("vote", f"must be one of {', '.join(VOTES)}, got {self.vote!r}")
            if self.mode == "predict" and self.bound != BOUNDS[0]:
                raise ConfigError("bound", "applies to certify only (PREDICT's test already compares the two "
                                           "leading classes)")
            self.temperature = check_temperature(self.temperature, self.vote)
            if self.radii is not None:
                # the cap's limit only binds sequential sampling (fixed sampling ignores --radii); radii
                # whose formula involves the inputs' dimension are checked once it is known (prepare)
                cap = self.sampling == "sequential" and not fam.needs_dim(self.norm)
                self.radii = check_stop_radii(self.radii, self.sigma if not cap else self.formula(None),
                                              self.n, self.alpha, cap=cap, vote=self.vote)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def formula(self, dim: int | None) -> PairFormula:
        """The radius formula of --noise, --norm, --sigma and --bound for inputs of ``dim`` elements."""
        return PairFormula(formula(self.noise, self.sigma, self.norm, dim), self.bound)

    def stop_radii(self, dim: int | None = None) -> list[float]:
        """The radii whose cells decide sequential stopping: --radii (checked against what the cap can
        certify for inputs of ``dim`` elements), or :func:`rscert.stats.sequential.default_stop_radii`.
        ``dim`` is needed only where the norm's radius involves it (docs/families.md)."""
        if self.radii is not None:
            return check_stop_radii(self.radii, self.formula(dim), self.n, self.alpha,
                                    cap=self.sampling == "sequential", vote=self.vote)
        return default_stop_radii(self.formula(dim), self.n, self.alpha, self.vote)

    def preprocess(self) -> str:
        """The input preprocessing as runs record it: the preset's name, plus what --resize, --crop and
        --interpolation change (``imagenet; resize 232; crop 224; bicubic``); read by
        :class:`rscert.data.decode.Preprocess`."""
        base = PRESET_SIZES.get(self.preset, {})
        parts = [self.preset]
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if value is not None and value != base.get(name):
                parts.append(f"{name} {value}")
        if self.interpolation not in (None, DEFAULT_INTERPOLATION):
            parts.append(self.interpolation)
        return "; ".join(parts)

    # -- identity ----------------------------------------------------------------------------------
    def identity_columns(self, run: dict) -> dict[str, Any]:
        """The columns that name the run and its settings on every row, whatever its status: the run
        id, what was certified (dataset, split, model, checkpoint, denoiser), the mode and the forward settings.
        ``run`` is the prepared run's facts (:func:`rscert.run.prepare.prepare`)."""
        return {"run_id": run["run_id"], "dataset": run["dataset"], "split": run["split"], "model": run["model"],
                "checkpoint_sha256": run["checkpoint_sha256"], "denoiser": run.get("denoiser"),
                "denoiser_sha256": run.get("denoiser_sha256"), "mode": self.mode, "precision": self.precision,
                "clamp": self.clamp, "preset": self.preprocess()}

    def run_columns(self, run: dict) -> dict[str, Any]:
        """The value of each of :data:`rscert.store.results.KEY_COLUMNS` that the run's rows share (one home
        for the columns that identify a run): :meth:`identity_columns` and the sampling settings. ``n`` is
        None under sequential sampling (each row says its own; ``n_max`` is the cap), ``n0`` under PREDICT.
        The selection record stores them for inputs without a row."""
        sequential = self.sampling == "sequential"
        return {**self.identity_columns(run), "train_sigma": None, "noise": self.noise, "norm": self.norm,
                "bound": self.bound, "vote": self.vote, "temperature": self.temperature, "sigma": self.sigma,
                "n0": None if self.mode == "predict" else self.n0, "n": None if sequential else self.n,
                "n_max": self.n, "sampling": self.sampling, "alpha": self.alpha, "seed": self.seed,
                "num_classes": run["num_classes"], "source": None}

    def result_fields(self, model_facts: dict, dim: int | None = None,
                      denoiser_facts: dict | None = None) -> dict[str, Any]:
        """Everything that changes what an input's row says (the run's fingerprint). The selection (the
        shard list, skip/start/end/max/subset/subset_seed) and the unit size are not here: no row depends
        on them, so one output can grow or shrink its selection and resume input by input (see
        rscert.data.plan); what each dataset index means is checked by content instead (rscert.data.layout).
        ``dim``: the probed input's number of elements (for sequential tables of radii that involve it).
        The norm, bound and vote appear where they differ from Cohen et al.'s (l2, pa, hard), so that
        the fingerprints of Gaussian runs made before they existed stay the same. Likewise a denoiser's
        weights hash (the base classifier is f∘d) appears only when there is a denoiser. The seed must be
        settled first (:func:`rscert.run.prepare.settle_seed` draws a fresh one or reads the folder's)."""
        if self.seed is None:
            raise ValueError("seed: not settled yet; prepare() draws a fresh one or reads the folder's")
        family = resolve(self.noise, self.norm)[0]
        beyond = {k: v for k, v in (("norm", self.norm), ("bound", self.bound), ("vote", self.vote))
                  if v != {"norm": "l2", "bound": BOUNDS[0], "vote": VOTES[0]}[k]}
        if self.temperature is not None:
            beyond["temperature"] = self.temperature
        return {
            "format": FORMAT_VERSION,
            "mode": self.mode,
            "noise_version": family.version,
            "preset": self.preprocess(),
            "model": model_facts.get("spec"),
            **({"model_args": self.model_args} if self.model_args else {}),
            "checkpoint_sha256": model_facts.get("checkpoint_sha256"),
            "weights_sha256": model_facts.get("weights_sha256"),
            "num_classes": model_facts.get("num_classes"),
            "normalize": model_facts.get("normalize"),
            "sigma": self.sigma,
            "n0": self.n0 if self.mode == "certify" else None,  # PREDICT has no selection phase
            "n": self.n,
            "alpha": self.alpha,
            "seed": self.seed,
            "precision": self.precision,
            "clamp": self.clamp,
            "noise": self.noise,
            **beyond,
            "sampling": self.sampling,
            **({"radii": self.stop_radii(dim), "schedule": look_schedule(self.n, self.alpha).describe()}
               if self.sampling == "sequential" else {}),
            **({"denoiser_sha256": denoiser_facts["weights_sha256"], "denoiser_kind": denoiser_facts["kind"]}
               if denoiser_facts else {}),
        }


def fingerprint(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


SELECTION_FIELDS = ("shards",)
"""Fields that folders written before the shard list left the fingerprint hold in their manifest's
``result_fields`` (and fingerprint): compared without them (:func:`same_results`)."""


def without_selection(stored: dict[str, Any]) -> dict[str, Any]:
    """A folder's recorded result fields less the selection fields older manifests held."""
    return {k: v for k, v in stored.items() if k not in SELECTION_FIELDS}


def same_results(stored: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether a folder's recorded result fields describe the same rows as ``current``: equal once the
    selection fields of older manifests are set aside (such a folder keeps its own fingerprint)."""
    return without_selection(stored) == current


CERTIFY_ONLY = ("n0", "sampling", "radii", "bound")
"""Settings PREDICT does not use (it has no selection phase, draws a fixed n and tests the top two counts)."""


def load_config(path: str | None, overrides: dict[str, Any], warn: Callable[[str], None] | None = None
                ) -> CertifyConfig:
    """The YAML file's values (if any), overridden by the command line's; validated.

    For ``rscert predict``, CERTIFY-only settings (:data:`CERTIFY_ONLY`) are ignored wherever they come
    from (a certify job file, or the command line), each named once through ``warn``; a bound other than
    ``pa`` is refused instead (it asks for a guarantee PREDICT does not give)."""
    values = load_yaml(path)
    mode = overrides.get("mode")
    if mode is not None and values.get("mode", mode) != mode:
        raise ConfigFileError(f"mode: {path!r} sets mode {values['mode']!r}, but the command is rscert {mode}; "
                              f"use rscert {values['mode']}, or remove mode from the file")
    values.update({k: v for k, v in overrides.items() if v is not None})
    if mode == "predict":
        if values.get("bound", "pa") != "pa":  # a request PREDICT cannot honour, unlike a count it does not draw
            raise ConfigFileError(f"bound: rscert predict certifies no radius (it tests the two leading counts), so "
                                  f"bound {values['bound']!r} does not apply; it is rscert certify's setting")
        ignored = [name for name in CERTIFY_ONLY if values.pop(name, None) is not None]
        if ignored and warn is not None:
            warn(f"warning: rscert predict ignores {', '.join(ignored)}: CERTIFY-only settings (PREDICT has no "
                 "selection phase and draws a fixed --n)")
    return CertifyConfig(**values)
