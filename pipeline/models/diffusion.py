"""One-shot diffusion denoiser (Carlini et al. 2023, "(Certified!!) Adversarial Robustness for Free!",
Algorithm 1), built on diffusers' ``UNet2DModel`` and the noise schedule of a diffusers scheduler.

A DDPM sees data in [-1, 1] and x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps. rscert's noisy input
x + e (e ~ N(0, sigma^2 I) in [0, 1] pixel units, drawn by rscert's own generator) is, in [-1, 1]
units, (2x - 1) + 2e: data plus Gaussian noise of standard deviation 2 sigma. Scaled by sqrt(abar_t)
it has the form of x_t exactly when sqrt((1 - abar_t) / abar_t) = 2 sigma. So:

1. t* = the first timestep t with sqrt((1 - abar_t) / abar_t) >= 2 sigma (:func:`timestep_for_sigma`);
2. x_t = sqrt(abar_t*) (2 (x + e) - 1)  (:meth:`OneShotDenoiser.forward`);
3. one model call at t*, x_0 estimated in closed form from its output (epsilon:
   x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar); sample: x_0 = output; v_prediction:
   x_0 = sqrt(abar) x_t - sqrt(1 - abar) v), clipped to [-1, 1], mapped back to [0, 1] by (x_0 + 1) / 2;
4. resized (bicubic, antialiased) to the classifier's input size if that differs.

The diffusion library never draws noise here: no ``add_noise``, no ``step``. The noise is rscert's
(its counter-based stream and its guarantees); the denoiser is a deterministic function of the
noisy input, which is what makes f∘d a base classifier that can be certified. (The published code
instead lets the diffusion library add noise of level sqrt((1 - abar_t*) / abar_t*) / 2 >= sigma to
the clean image and certifies with sigma; here the noise is exactly sigma.) Carlini et al.'s code
starts its search at t = 1; :func:`timestep_for_sigma` starts at t = 0, which differs only when 2 sigma
is below the schedule's first ratio (sigma < 0.005 on the DDPM linear schedule).

A checkpoint folder is what diffusers' ``save_pretrained`` writes: a pipeline folder with ``unet/``
and ``scheduler/`` (e.g. the public CIFAR-10 DDPM), or one folder holding the UNet's ``config.json``
and weights next to a ``scheduler_config.json``. It is read from local disk only (``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rscert.models.load import ModelError

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def noise_ratios(alphas_cumprod: np.ndarray) -> np.ndarray:
    """sqrt((1 - abar_t) / abar_t) for every t: the noise level of step t relative to the signal."""
    abar = np.asarray(alphas_cumprod, dtype=np.float64)
    return np.sqrt((1.0 - abar) / abar)


def timestep_for_sigma(alphas_cumprod: np.ndarray, sigma: float) -> int:
    """t* = min{t : sqrt((1 - abar_t) / abar_t) >= 2 sigma} (Carlini et al. 2023, Section 3).

    Raises ModelError when the schedule never reaches 2 sigma (the diffusion model was not trained
    for noise that large)."""
    ratios = noise_ratios(alphas_cumprod)
    reached = np.flatnonzero(ratios >= 2.0 * sigma)
    if reached.size == 0:
        raise ModelError(f"denoiser: sigma {sigma:g} is beyond the diffusion schedule: its largest noise level "
                         f"sqrt((1 - abar_T) / abar_T) / 2 is {ratios[-1] / 2:.4g}")
    return int(reached[0])


class OneShotDenoiser(nn.Module):
    """d(x) = (clip(x_0_hat(sqrt(abar) (2x - 1), t*)) + 1) / 2, resized to ``output_size`` if given.

    ``alphas_cumprod`` and ``timestep`` are buffers, so the weight hash covers the schedule and t*."""

    def __init__(self, unet: nn.Module, alphas_cumprod: torch.Tensor, sigma: float,
                 prediction_type: str = "epsilon", output_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ModelError(f"denoiser: prediction type {prediction_type!r} is not one of {PREDICTION_TYPES}")
        self.unet = unet
        abar = alphas_cumprod.detach().to(torch.float64).cpu()
        t = timestep_for_sigma(abar.numpy(), sigma)
        self.register_buffer("alphas_cumprod", abar)
        self.register_buffer("timestep", torch.tensor(t, dtype=torch.int64))
        self.t = t
        self.sqrt_abar = math.sqrt(float(abar[t]))
        self.sqrt_one_minus_abar = math.sqrt(1.0 - float(abar[t]))
        self.prediction_type = prediction_type
        self.output_size = None if output_size is None else (int(output_size[0]), int(output_size[1]))

    def scaled_input(self, x: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t*) (2 x - 1): the noisy image in the model's units at step t*."""
        return self.sqrt_abar * (2.0 * x - 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x_t = self.scaled_input(x)
        steps = torch.full((x.shape[0],), self.t, device=x.device, dtype=torch.int64)
        out = self.unet(x_t, steps).sample
        out = out[:, : x.shape[1]]  # models that also learn the variance output 2C channels (eps first)
        a, b = self.sqrt_abar, self.sqrt_one_minus_abar
        if self.prediction_type == "epsilon":
            x0 = (x_t - b * out) / a
        elif self.prediction_type == "v_prediction":
            x0 = a * x_t - b * out
        else:
            x0 = out
        y = (x0.clamp(-1.0, 1.0) + 1.0) / 2.0
        if self.output_size is not None and tuple(y.shape[-2:]) != self.output_size:
            y = F.interpolate(y, size=self.output_size, mode="bicubic", antialias=True, align_corners=False)
        return y


def folder_sha256(folder: Path) -> str:
    """SHA-256 over (relative path, SHA-256 of the bytes) of every file under ``folder``, in path order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        inner = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                inner.update(block)
        digest.update(f"{path.relative_to(folder).as_posix()}\x1f{inner.hexdigest()}\n".encode())
    return digest.hexdigest()


def _locate(folder: Path) -> tuple[Path, Path]:
    """(UNet folder, scheduler config file) of a pipeline folder or of a flat one."""
    unet_dir = folder / "unet" if (folder / "unet" / "config.json").is_file() else folder
    for candidate in (folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json",
                      unet_dir / "scheduler_config.json"):
        if candidate.is_file():
            return unet_dir, candidate
    raise ModelError(f"denoiser: {folder} has no scheduler config (scheduler/scheduler_config.json or "
                     "scheduler_config.json): the noise schedule decides the timestep")


def _scheduler(config_file: Path):
    import diffusers

    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"denoiser: cannot read {config_file}: {exc}") from None
    cls = getattr(diffusers, str(config.get("_class_name", "")), None)
    if cls is None or not hasattr(cls, "from_config"):
        cls = diffusers.DDPMScheduler
    scheduler = cls.from_config(config)
    if not hasattr(scheduler, "alphas_cumprod"):
        raise ModelError(f"denoiser: scheduler {type(scheduler).__name__} of {config_file} has no alphas_cumprod "
                         "(a discrete DDPM/DDIM-type schedule is needed)")
    return scheduler


def load_diffusion_denoiser(folder: str, sigma: float, output_size: tuple[int, int] | None = None
                            ) -> tuple[OneShotDenoiser, str, dict]:
    """The one-shot denoiser of a local diffusers checkpoint folder, its folder hash, and its facts."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download anything at run time
    if "://" in folder:
        raise ModelError(f"denoiser: diffusion folders are read from local disk; copy {folder!r} to the workers")
    root = Path(folder)
    if not root.is_dir():
        raise ModelError(f"denoiser: no such diffusion folder {folder!r}")
    unet_dir, scheduler_file = _locate(root)
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise ModelError("denoiser: diffusion denoisers need diffusers: pip install 'rscert[denoise]'") from None

    try:
        unet = UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"denoiser: cannot load a UNet2DModel from {unet_dir}: {str(exc).splitlines()[0]}") from None
    scheduler = _scheduler(scheduler_file)
    prediction = getattr(scheduler.config, "prediction_type", "epsilon")
    module = OneShotDenoiser(unet, torch.as_tensor(scheduler.alphas_cumprod), sigma, prediction, output_size)
    detail = {"arch": f"diffusion:{type(unet).__name__}", "timestep": module.t,
              "num_train_timesteps": int(len(scheduler.alphas_cumprod)), "prediction_type": prediction,
              "alpha_bar": float(module.alphas_cumprod[module.t])}
    return module, folder_sha256(root), detail
