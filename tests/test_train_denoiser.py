"""`rscert train --denoiser` on the real digits: the MSE objective learns to denoise, the stability
objective trains through a frozen classifier, resume is exact, Ray Train runs it, and the published
checkpoint format it writes is what `--denoiser` loads."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from rscert.config.train import TrainConfig
from rscert.data.shards import expand_shards
from rscert.demo import write_digits
from rscert.models.denoisers import Denoised, load_denoiser
from rscert.models.load import load_model, weights_sha256
from rscert.train import load_samples, noisy_accuracy, train


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def clean_classifier(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    train(TrainConfig(data=digits[0], model="small_cnn", num_classes=10, out=str(out), sigma=0.0, epochs=12,
                      optimizer="sgd", lr=0.05, schedule="cosine"), log=lambda m: None)
    return out / "checkpoint.pt"


def _denoiser_config(spec, out, **kw):
    settings = {"data": spec, "denoiser": "dncnn", "denoiser_width": 16, "denoiser_depth": 5, "out": str(out),
                "sigma": 0.5, "epochs": 8, "batch_size": 32, "optimizer": "adam", "lr": 2e-3, "schedule": "constant",
                "weight_decay": 0.0, "seed": 0}
    return TrainConfig(**{**settings, **kw})


def _mse(denoiser, samples, sigma, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.stack([s[0] for s in samples])
    noisy = x + sigma * torch.randn(x.shape, generator=gen)
    with torch.no_grad():
        return float(((denoiser(noisy) - x) ** 2).mean())


@pytest.fixture(scope="module")
def mse_denoiser(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("mse")
    metrics = train(_denoiser_config(digits[0], out, epochs=6), log=lambda m: None)
    assert metrics["epoch"] == 5
    return out / "checkpoint.pt"


def test_mse_objective_denoises(digits, mse_denoiser):
    loaded = load_denoiser(str(mse_denoiser), sigma=0.5)  # the published format
    assert loaded.arch == "dncnn" and loaded.module.channels == 1 and loaded.module.width == 16
    test = load_samples(expand_shards(digits[1]), "none")
    assert _mse(loaded.module, test, 0.5) < 0.25 * 0.5**2  # well below the noise's own E e^2 = sigma^2


def test_stability_objective_helps_an_off_the_shelf_classifier(digits, clean_classifier, mse_denoiser, tmp_path):
    """Salman et al.'s recipe: MSE first, then the stability objective through the frozen classifier."""
    before = weights_sha256(load_model(checkpoint=clean_classifier).model)
    logs: list[str] = []
    cfg = _denoiser_config(digits[0], tmp_path / "stab", objective="stability", denoiser_init=str(mse_denoiser),
                           classifier_checkpoint=str(clean_classifier), epochs=6, denoiser_width=None,
                           denoiser_depth=None)
    metrics = train(cfg, log=logs.append)
    assert "stability" in metrics and metrics["stability"] > 0.5 and "stability loss" in logs[-1]
    assert weights_sha256(load_model(checkpoint=clean_classifier).model) == before  # frozen: never written
    test = load_samples(expand_shards(digits[1]), "none")
    classifier = load_model(checkpoint=clean_classifier).model.eval()
    denoiser = load_denoiser(str(tmp_path / "stab" / "checkpoint.pt"), sigma=0.5).module
    alone = noisy_accuracy(classifier, test, sigma=0.5, seed=2)
    behind = noisy_accuracy(Denoised(denoiser, classifier), test, sigma=0.5, seed=2)
    assert behind > alone + 0.03, (alone, behind)


def test_denoiser_resume_is_exact(digits, tmp_path):
    train(_denoiser_config(digits[0], tmp_path / "straight", epochs=3), log=lambda m: None)
    train(_denoiser_config(digits[0], tmp_path / "resumed", epochs=2), log=lambda m: None)
    logs: list[str] = []
    train(_denoiser_config(digits[0], tmp_path / "resumed", epochs=3), log=logs.append)
    assert any("resuming after epoch 2" in m for m in logs)
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["arch"] == "dncnn"
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    with pytest.raises(ValueError, match="denoiser_width: 16 in the checkpoint, 8 now"):
        train(_denoiser_config(digits[0], tmp_path / "resumed", epochs=4, denoiser_width=8), log=logs.append)


def test_denoiser_on_two_ray_train_workers(digits, tmp_path):
    import ray

    try:
        metrics = train(_denoiser_config(digits[0], tmp_path / "ddp", epochs=4, num_workers=2), log=lambda m: None)
    finally:
        ray.shutdown()
    assert metrics["epoch"] == 3
    test = load_samples(expand_shards(digits[1]), "none")
    assert _mse(load_denoiser(str(tmp_path / "ddp" / "checkpoint.pt"), sigma=0.5).module, test, 0.5) < 0.5 * 0.5**2


@pytest.mark.parametrize(("settings", "message"), [
    ({"denoiser": None}, "model: required to train a classifier"),
    ({"sigma": 0.0}, "sigma: a denoiser is trained to remove noise"),
    ({"objective": "stability"}, "classifier_checkpoint: the stability objective"),
    ({"classifier_checkpoint": "c.pt"}, "only for --objective stability"),
    ({"denoiser": "memnet"}, "DnCNN only"),
    ({"denoiser": "unet"}, "denoiser"),
    ({"denoiser_init": "d.pt"}, "the size comes from --denoiser-init"),
])
def test_denoiser_settings_are_checked(tmp_path, settings, message):
    with pytest.raises(ValidationError, match=message):
        _denoiser_config("data.tar", tmp_path, **settings)
