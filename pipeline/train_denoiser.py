"""Training a denoiser for denoised smoothing (Salman et al. 2020, Section 3.2), in this process or on
Ray Train workers, with the data, optimiser, schedule, resume and checkpoint cadence of ``rscert train``.

Objectives, for a clean input x and e ~ N(0, sigma^2 I) in [0, 1] pixel space:

* ``mse``: E ||d(x + e) - x||^2 (the denoising objective; needs no classifier);
* ``stability``: E CE(f(d(x + e)), argmax f(x)) through a frozen classifier f (``--classifier-checkpoint``,
  and ``--model`` if the checkpoint does not record its architecture): d learns to make f's prediction
  on the denoised noisy input agree with f's prediction on the clean one.

The denoiser is saved after every epoch in the published denoised-smoothing format,
``OUT/checkpoint.pt`` = ``{"arch", "state_dict", ...}`` (plus the optimiser, the schedule and the RNG
state, so that a rerun resumes after the last saved epoch), which ``--denoiser OUT/checkpoint.pt``
loads.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from rscert.config.train import TrainConfig
from rscert.data.shards import expand_shards
from rscert.errors import ConfigError
from rscert.models.denoiser_archs import DENOISER_ARCHS, DnCNN
from rscert.models.denoisers import save_denoiser
from rscert.models.load import load_model
from rscert.train import CHECKPOINT, batches, join_uneven, load_samples, make_optimizer, make_schedule, resume_state


def build_denoiser(cfg: TrainConfig, channels: int) -> nn.Module:
    """The untrained denoiser of ``cfg`` for images of ``channels`` channels (DnCNN's width and
    depth may be set; the defaults are the published 64 / 17, wide 128 / 17)."""
    net = DENOISER_ARCHS[cfg.denoiser](channels)
    if isinstance(net, DnCNN) and (cfg.denoiser_width or cfg.denoiser_depth):
        net = DnCNN(channels, cfg.denoiser_width or net.width, cfg.denoiser_depth or net.depth)
    return net


def frozen_classifier(cfg: TrainConfig, device: torch.device) -> nn.Module:
    """The stability objective's classifier, in eval mode, without gradients for its weights."""
    loaded = load_model(cfg.model, cfg.classifier_checkpoint, cfg.num_classes)
    model = loaded.model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def denoiser_loop(cfg_dict: dict, log: Callable[[str], None] = print) -> dict:
    """One worker's denoiser training (rank 0 of 1 in-process, or one of Ray Train's workers)."""
    cfg = TrainConfig(**cfg_dict)
    distributed = cfg.num_workers > 1
    rank, world = 0, 1
    if distributed:
        import ray.train

        context = ray.train.get_context()
        rank, world = context.get_world_rank(), context.get_world_size()
    samples = load_samples(expand_shards(cfg.data), cfg.preset, rank, world)
    if not samples:
        raise ConfigError("data", f"no decodable training samples for worker {rank}")
    channels = int(samples[0][0].shape[0])
    device = torch.device(cfg.device or ("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu"))
    torch.manual_seed(cfg.seed)
    denoiser = build_denoiser(cfg, channels).to(device)
    classifier = frozen_classifier(cfg, device) if cfg.objective == "stability" else None
    opt = make_optimizer(cfg, denoiser.parameters())
    schedule = make_schedule(cfg, opt)
    start_epoch = 0
    state = resume_state(cfg, "none")
    if state is not None:
        denoiser.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"]) + 1
        if "rng_state" in state and not distributed:
            torch.set_rng_state(state["rng_state"])
        if rank == 0:
            log(f"resuming after epoch {start_epoch} from {Path(cfg.out) / CHECKPOINT}")
    model: nn.Module = denoiser
    if distributed:
        import ray.train.torch

        model = ray.train.torch.prepare_model(denoiser, move_to_device=False)
    mse, cross_entropy = nn.MSELoss(), nn.CrossEntropyLoss()
    metrics: dict = {"epoch": start_epoch - 1}
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        total, seen, agree, t0 = 0.0, 0, 0, time.perf_counter()
        with join_uneven(model) if distributed else contextlib.nullcontext():
            for x, _ in batches(samples, cfg.batch_size, seed=cfg.seed * 100_003 + epoch * 7919 + rank):
                x = x.to(device)
                out = model(x + cfg.sigma * torch.randn_like(x))
                if classifier is None:
                    loss = mse(out, x)
                else:
                    with torch.no_grad():
                        target = classifier(x).argmax(1)
                    logits = classifier(out)
                    loss = cross_entropy(logits, target)
                    agree += int((logits.argmax(1) == target).sum())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(x)
                seen += len(x)
        schedule.step()
        metrics = {"epoch": epoch, "loss": total / seen, "lr": opt.param_groups[0]["lr"],
                   "seconds": time.perf_counter() - t0}
        if classifier is not None:
            metrics["stability"] = agree / seen
        if rank == 0:
            Path(cfg.out).mkdir(parents=True, exist_ok=True)
            save_denoiser(Path(cfg.out) / CHECKPOINT, denoiser, cfg.denoiser, channels=channels, epoch=epoch,
                          optimizer=opt.state_dict(), scheduler=schedule.state_dict(), rng_state=torch.get_rng_state(),
                          metrics=metrics, train_config={**cfg.model_dump(), "normalize": "none"}, sigma=cfg.sigma)
            extra = f", stability {metrics['stability']:.3f}" if classifier is not None else ""
            log(f"epoch {epoch + 1}/{cfg.epochs}: {cfg.objective} loss {metrics['loss']:.5f}{extra}, "
                f"lr {metrics['lr']:.4g} ({metrics['seconds']:.1f}s)")
        if distributed:
            import ray.train

            ray.train.report(metrics)
    return metrics
