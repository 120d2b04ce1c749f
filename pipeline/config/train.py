"""Settings of ``rscert train`` (no torch here, so the command's help and checks stay fast)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rscert.constants import NOISE
from rscert.errors import ConfigError
from rscert.stats.families import family


class TrainConfig(BaseModel):
    """Settings of ``rscert train`` (command line and YAML, like certify's)."""

    model_config = ConfigDict(extra="forbid")

    data: str | list[str] = Field(description="training shards")
    model: str = Field(description="torchvision name, rscert arch (small_cnn, cifar_resnet110) or module:factory")
    num_classes: int = Field(ge=2, description="number of classes")
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
