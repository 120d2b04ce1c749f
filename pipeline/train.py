"""Noise-augmented training (Cohen et al. 2019, Section 4: train f on x + e, e ~ N(0, sigma^2 I),
at the sigma it will be certified with; ``--noise`` trains under another family at the same standard
deviation per coordinate, as Yang et al. 2020 do for the family a model is certified with),
single-process or data-parallel on Ray Train.

The model is ``Sequential(Normalize, net)`` as in certification, so noise is added in [0, 1] pixel
space before normalisation. A checkpoint in the published format is written after every epoch
(``OUT/checkpoint.pt``, atomically); ``rscert certify --checkpoint OUT/checkpoint.pt`` loads it, and a
rerun resumes after the last saved epoch.

``--denoiser ARCH`` trains a denoiser instead (denoised smoothing, Salman et al. 2020, Section 3.2),
with the same data, optimiser, schedule, resume and Ray Train path. For a clean input x and
e ~ N(0, sigma^2 I) in [0, 1] pixel space the objectives are ``mse``, E ||d(x + e) - x||^2, and
``stability``, E CE(f(d(x + e)), argmax f(x)) through a frozen classifier f. The checkpoint is the
published denoised-smoothing format ``{"arch", "state_dict", ...}``, which ``--denoiser
OUT/checkpoint.pt`` loads.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from rscert.config.train import TrainConfig
from rscert.constants import NOISE
from rscert.data.decode import SampleError, decode_input, decode_label
from rscert.data.shards import expand_shards, walk
from rscert.errors import ConfigError
from rscert.models.denoiser_archs import DENOISER_ARCHS, DnCNN, MemNet
from rscert.models.denoisers import load_denoiser, save_denoiser
from rscert.models.load import build_net, default_normalization, load_model, read_checkpoint, save_checkpoint, wrap
from rscert.sampling.draws import unit_noise_like

CHECKPOINT = "checkpoint.pt"


def load_samples(shards: list[str], preset: str, rank: int = 0, world: int = 1) -> list[tuple[torch.Tensor, int]]:
    """Decoded (input, label) pairs of this worker's share: whole shards when there are enough,
    else every world-th sample. Undecodable samples are skipped (training, unlike certification,
    has no row to record them in)."""
    by_shard = len(shards) >= world
    mine = shards[rank::world] if by_shard else shards
    out, position = [], 0
    for url in mine:
        for raw in walk(url):
            keep = by_shard or position % world == rank
            position += 1
            if not keep:
                continue
            try:
                out.append((decode_input(raw.fields, preset), decode_label(raw.fields)))
            except SampleError:
                continue
    return out


def batches(samples: list, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    for i in range(0, len(order), batch_size):
        chunk = [samples[j] for j in order[i : i + batch_size]]
        yield torch.stack([c[0] for c in chunk]), torch.tensor([c[1] for c in chunk], dtype=torch.int64)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The batch order's seed for one worker's epoch (the classifier's and the denoiser's loops alike)."""
    return seed * 100_003 + epoch * 7919 + rank


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_schedule(cfg: TrainConfig, opt: torch.optim.Optimizer):
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


_IDENTITY_FIELDS = ("model", "num_classes", "normalize", "preset", "sigma", "noise", "optimizer", "schedule", "seed",
                    "denoiser", "objective", "classifier_checkpoint", "denoiser_width", "denoiser_depth",
                    "denoiser_init")
_BEFORE = {"noise": NOISE}  # what checkpoints written before a field existed were trained with


def _resume_state(cfg: TrainConfig, normalize: str) -> dict | None:
    path = Path(cfg.out) / CHECKPOINT
    if not cfg.resume or not path.exists():
        return None
    state = read_checkpoint(path)
    saved = state.get("train_config", {})
    current = {**cfg.model_dump(), "normalize": normalize}
    diffs = [f"{k}: {saved.get(k)!r} in the checkpoint, {current.get(k)!r} now"
             for k in _IDENTITY_FIELDS if saved.get(k, _BEFORE.get(k)) != current.get(k)]
    if diffs:
        raise ConfigError("out", f"{path} was trained with other settings; use another --out or --no-resume:\n  "
                          + "\n  ".join(diffs))
    return state


def noisy_accuracy(model: nn.Module, samples: list, sigma: float, seed: int = 0, batch_size: int = 512,
                   noise: str = NOISE) -> float:
    """Accuracy of the base classifier under noise of the family ``noise`` at standard deviation sigma
    (N(0, sigma^2 I) by default; one draw per input)."""
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(samples), batch_size):
            chunk = samples[i : i + batch_size]
            x = torch.stack([c[0] for c in chunk])
            y = torch.tensor([c[1] for c in chunk])
            noisy = x + sigma * unit_noise_like(x, noise, generator=gen)
            correct += int((model(noisy).argmax(1) == y).sum())
    return correct / max(len(samples), 1)


def _resume(cfg: TrainConfig, normalize: str, module: nn.Module, opt: torch.optim.Optimizer, schedule,  # noqa: ANN001
            distributed: bool, rank: int, log: Callable[[str], None]) -> int:
    """The first epoch to train: 0, or the one after the checkpoint's, with the module, optimizer and
    schedule restored from it (and, in-process, torch's RNG, so the noise continues where it stopped)."""
    state = _resume_state(cfg, normalize)
    if state is None:
        return 0
    module.load_state_dict(state["state_dict"])
    opt.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["scheduler"])
    start_epoch = int(state["epoch"]) + 1
    if "rng_state" in state and not distributed:
        torch.set_rng_state(state["rng_state"])
    if rank == 0:
        log(f"resuming after epoch {start_epoch} from {Path(cfg.out) / CHECKPOINT}")
    return start_epoch


def _rank_and_world(distributed: bool) -> tuple[int, int]:
    """This worker's rank and the number of workers: Ray Train's when distributed, else (0, 1)."""
    if not distributed:
        return 0, 1
    import ray.train

    context = ray.train.get_context()
    return context.get_world_rank(), context.get_world_size()


def train_loop(cfg_dict: dict, log: Callable[[str], None] = print) -> dict:
    """One worker's training (rank 0 of 1 in-process, or one of Ray Train's workers)."""
    cfg = TrainConfig(**cfg_dict)
    distributed = cfg.num_workers > 1
    rank, world = _rank_and_world(distributed)
    torch.manual_seed(cfg.seed)
    normalize = default_normalization(cfg.model) if cfg.normalize == "auto" else cfg.normalize
    model = wrap(build_net(cfg.model, cfg.num_classes), normalize)
    device = torch.device(cfg.device or ("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu"))
    model.to(device)
    opt = make_optimizer(cfg, model.parameters())
    schedule = make_schedule(cfg, opt)
    start_epoch = _resume(cfg, normalize, model, opt, schedule, distributed, rank, log)
    train_model: nn.Module = model
    if distributed:
        import ray.train.torch

        train_model = ray.train.torch.prepare_model(model, move_to_device=False)
    samples = load_samples(expand_shards(cfg.data), cfg.preset, rank, world)
    if not samples:
        raise ConfigError("data", f"no decodable training samples for worker {rank}")
    loss_fn = nn.CrossEntropyLoss()
    metrics: dict = {"epoch": start_epoch - 1}
    for epoch in range(start_epoch, cfg.epochs):
        train_model.train()
        total, seen, correct, t0 = 0.0, 0, 0, time.perf_counter()
        with _join(train_model) if distributed else contextlib.nullcontext():
            for x, y in batches(samples, cfg.batch_size, seed=_epoch_seed(cfg.seed, epoch, rank)):
                x, y = x.to(device), y.to(device)
                if cfg.sigma > 0:
                    x = x + cfg.sigma * unit_noise_like(x, cfg.noise)
                logits = train_model(x)
                loss = loss_fn(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(y)
                seen += len(y)
                correct += int((logits.argmax(1) == y).sum())
        schedule.step()
        metrics = {"epoch": epoch, "loss": total / seen, "noisy_train_accuracy": correct / seen,
                   "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        if rank == 0:
            Path(cfg.out).mkdir(parents=True, exist_ok=True)
            save_checkpoint(Path(cfg.out) / CHECKPOINT, model, cfg.model, cfg.num_classes, normalize,
                            epoch=epoch, optimizer=opt.state_dict(), scheduler=schedule.state_dict(),
                            rng_state=torch.get_rng_state(), metrics=metrics,
                            train_config={**cfg.model_dump(), "normalize": normalize}, sigma=cfg.sigma,
                            noise=cfg.noise)
            log(f"epoch {epoch + 1}/{cfg.epochs}: loss {metrics['loss']:.4f}, noisy train accuracy "
                f"{metrics['noisy_train_accuracy']:.3f}, lr {metrics['lr']:.4g} ({metrics['seconds']:.1f}s)")
        if distributed:
            import ray.train

            ray.train.report(metrics)
    return metrics


def _join(model: nn.Module) -> contextlib.AbstractContextManager:
    """DDP's Join: workers with fewer batches keep shadowing the others' all-reduces (uneven shares)."""
    from torch.distributed.algorithms.join import Join

    return Join([model])


# -- denoisers (Salman et al. 2020, Section 3.2) ---------------------------------------------------------
def build_denoiser(cfg: TrainConfig, channels: int) -> nn.Module:
    """The denoiser of ``cfg`` for images of ``channels`` channels before training: the weights of
    ``--denoiser-init`` (e.g. an MSE-trained denoiser, which Salman et al. fine-tune with the stability
    objective), else untrained (DnCNN's width and depth may be set; the defaults are the published
    64 / 17, wide 128 / 17)."""
    if cfg.denoiser_init is not None:
        net = load_denoiser(cfg.denoiser_init, cfg.sigma).module
        if not isinstance(net, MemNet if cfg.denoiser == "memnet" else DnCNN):
            raise ConfigError("denoiser_init", f"{cfg.denoiser_init} is not a {cfg.denoiser} denoiser")
        for p in net.parameters():
            p.requires_grad_(True)
        return net.train()
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
    rank, world = _rank_and_world(distributed)
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
    start_epoch = _resume(cfg, "none", denoiser, opt, schedule, distributed, rank, log)
    model: nn.Module = denoiser
    if distributed:
        import ray.train.torch

        model = ray.train.torch.prepare_model(denoiser, move_to_device=False)
    mse, cross_entropy = nn.MSELoss(), nn.CrossEntropyLoss()
    metrics: dict = {"epoch": start_epoch - 1}
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        total, seen, agree, t0 = 0.0, 0, 0, time.perf_counter()
        with _join(model) if distributed else contextlib.nullcontext():
            for x, _ in batches(samples, cfg.batch_size, seed=_epoch_seed(cfg.seed, epoch, rank)):
                x = x.to(device)
                out = model(x + cfg.sigma * unit_noise_like(x, cfg.noise))
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


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> dict:
    """Train a classifier (or, with ``cfg.denoiser``, a denoiser) in this process, or on
    ``num_workers`` Ray Train workers (DDP)."""
    if not expand_shards(cfg.data):
        raise ConfigError("data", f"no shards matched {cfg.data!r}")
    loop = train_loop if cfg.denoiser is None else denoiser_loop
    if cfg.num_workers == 1:
        return loop(cfg.model_dump(), log)
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from rscert.run.ray_runner import init_ray

    init_ray(env_vars={"OMP_NUM_THREADS": "1"})
    trainer = TorchTrainer(
        loop,
        train_loop_config=cfg.model_dump(),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu),
        run_config=RunConfig(name="rscert-train", storage_path=str(Path(cfg.out).resolve() / "ray_train")),
    )
    trainer.fit()
    state = read_checkpoint(Path(cfg.out) / CHECKPOINT)  # rank 0 wrote it after every epoch
    return dict(state.get("metrics", {}))

