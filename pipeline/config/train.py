"""Settings of ``rscert train`` (no torch here, so the command's help and checks stay fast)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rscert.constants import NOISE
from rscert.errors import ConfigError
from rscert.stats.families import family

DENOISER_ARCHS = ("dncnn", "dncnn_wide", "memnet")


class TrainConfig(BaseModel):
    """Settings of ``rscert train`` (command line and YAML, like certify's)."""

    model_config = ConfigDict(extra="forbid")

    data: str | list[str] = Field(description="training shards")
    model: str | None = Field(None, description="torchvision name, rscert arch (small_cnn, cifar_resnet110), timm:NAME "
                              "or module:factory (required for a classifier; with --denoiser only for the stability "
                              "objective's classifier, when its checkpoint does not record it)")
    num_classes: int | None = Field(None, ge=2, description="number of classes (required for a classifier)")
    denoiser: Literal[DENOISER_ARCHS] | None = Field(None,  # type: ignore[valid-type]
        description="train a denoiser of this architecture instead of a classifier (denoised smoothing; "
                    "docs/denoised.md): dncnn | dncnn_wide | memnet")
    objective: Literal["mse", "stability"] = Field("mse",
        description="denoiser objective: mse (||d(x+e) - x||^2) or stability (cross-entropy of f(d(x+e)) against "
                    "f(x)'s class, through the frozen --classifier-checkpoint)")
    classifier_checkpoint: str | None = Field(None, description="the frozen classifier of the stability objective")
    denoiser_init: str | None = Field(None,
        description="start the denoiser from this checkpoint (e.g. MSE-trained, then fine-tuned with --objective "
                    "stability as Salman et al. do)")
    denoiser_width: int | None = Field(None, ge=1, description="DnCNN channels (default 64; dncnn_wide 128)")
    denoiser_depth: int | None = Field(None, ge=2, description="DnCNN convolution layers (default 17)")
    out: str = Field(description="folder for checkpoint.pt (written every epoch)")
    normalize: str = Field("auto", description="imagenet | cifar | none | auto (from the architecture)")
    preset: Literal["imagenet", "cifar", "none"] = Field("none", description="input preprocessing, as in certify")
    sigma: float = Field(ge=0, allow_inf_nan=False,
        description="training noise level: standard deviation per coordinate (0: no noise)")
    noise: str = Field(NOISE, description="training noise family: gaussian | discrete-gaussian | laplace | uniform "
                       "(as certify's --noise; discrete-gaussian trains with the Gaussian)")
    epochs: int = Field(10, ge=1, description="total epochs (a rerun resumes after the last saved one)")
    batch_size: int = Field(64, ge=1, description="batch size per worker")
    optimizer: Literal["sgd", "adam", "adamw"] = Field("sgd", description="sgd (with momentum) | adam | adamw")
    lr: float = Field(0.1, gt=0, description="initial learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(1e-4, ge=0, description="L2 weight decay")
    schedule: Literal["step", "cosine", "constant"] = Field("step", description="learning-rate schedule over epochs")
    lr_step: int = Field(30, ge=1, description="epochs per step of the step schedule")
    gamma: float = Field(0.1, gt=0, le=1, description="factor per step of the step schedule")
    seed: int = Field(0, ge=0, description="seed of initialisation, shuffling and noise")
    num_workers: int = Field(1, ge=1, description="data-parallel Ray Train workers (1: this process)")
    use_gpu: bool = Field(False, description="train on GPUs (one per Ray Train worker)")
    resume: bool = Field(True, description="continue from OUT/checkpoint.pt if it exists")
    device: str | None = Field(None, description="torch device for single-process training")

    @field_validator("noise")
    @classmethod
    def _noise(cls, value: str) -> str:
        try:
            family(value)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("noise: ")) from None
        return value

    @model_validator(mode="after")
    def _task(self) -> TrainConfig:
        if self.denoiser is None:
            for name in ("model", "num_classes"):
                if getattr(self, name) is None:
                    raise ValueError(f"{name}: required to train a classifier (or give --denoiser ARCH to train a "
                                     "denoiser)")
            given = sorted(n for n in ("classifier_checkpoint", "denoiser_width", "denoiser_depth", "denoiser_init")
                           if getattr(self, n) is not None) + (["objective"] if self.objective != "mse" else [])
            if given:
                raise ValueError(f"{given[0]}: only for denoiser training (--denoiser ARCH)")
            return self
        if self.sigma <= 0:
            raise ValueError("sigma: a denoiser is trained to remove noise; give a noise level > 0")
        if self.objective == "stability" and self.classifier_checkpoint is None:
            raise ValueError("classifier_checkpoint: the stability objective trains through a frozen classifier; "
                             "give its checkpoint")
        if self.objective == "mse" and self.classifier_checkpoint is not None:
            raise ValueError("classifier_checkpoint: only for --objective stability")
        if self.denoiser_init is not None and (self.denoiser_width or self.denoiser_depth):
            raise ValueError("denoiser_width: the size comes from --denoiser-init's checkpoint")
        if self.denoiser == "memnet" and (self.denoiser_width or self.denoiser_depth):
            raise ValueError("denoiser_width: DnCNN only (MemNet has the published size)")
        return self
