"""Noise-augmented training on the real digits: it helps under noise, runs on two Ray Train workers,
and resumes exactly where it stopped."""

from __future__ import annotations

import pytest
import torch

from rscert.config.train import TrainConfig
from rscert.data.shards import expand_shards
from rscert.demo import write_digits
from rscert.models.load import load_model
from rscert.train import load_samples, noisy_accuracy, train


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("digits"))


def _config(spec, out, **kw):
    settings = {"data": spec, "model": "small_cnn", "num_classes": 10, "out": str(out), "sigma": 0.5, "epochs": 12,
                "batch_size": 64, "optimizer": "sgd", "lr": 0.05, "schedule": "cosine", "seed": 0}
    return TrainConfig(**{**settings, **kw})


def test_noise_training_beats_chance_and_clean_training_under_noise(digits, tmp_path):
    train_spec, test_spec = digits
    test = load_samples(expand_shards(test_spec), "none")
    assert len(test) == 450
    train(_config(train_spec, tmp_path / "noisy"), log=lambda m: None)
    train(_config(train_spec, tmp_path / "clean", sigma=0.0), log=lambda m: None)
    noisy_model = load_model(checkpoint=tmp_path / "noisy" / "checkpoint.pt").model
    clean_model = load_model(checkpoint=tmp_path / "clean" / "checkpoint.pt").model
    acc_noisy = noisy_accuracy(noisy_model, test, sigma=0.5, seed=1)
    acc_clean = noisy_accuracy(clean_model, test, sigma=0.5, seed=1)
    assert acc_noisy > 0.5  # chance is 0.1
    assert acc_noisy > acc_clean + 0.1, (acc_noisy, acc_clean)
    assert noisy_accuracy(clean_model, test, sigma=0.0) > 0.9  # the clean model did learn digits


def test_resume_continues_from_the_saved_epoch_exactly(digits, tmp_path):
    train_spec, _ = digits
    logs = []
    train(_config(train_spec, tmp_path / "straight", epochs=4), log=logs.append)

    class CrashError(Exception):
        pass

    def crash_after_epoch_2(message: str) -> None:  # called right after epoch 2's checkpoint is written
        if message.startswith("epoch 2/4"):
            raise CrashError

    with pytest.raises(CrashError):
        train(_config(train_spec, tmp_path / "resumed", epochs=4), log=crash_after_epoch_2)
    logs.clear()
    train(_config(train_spec, tmp_path / "resumed", epochs=4), log=logs.append)
    assert logs[0].startswith("resuming after epoch 2")
    assert sum("epoch" in m and "/4" in m for m in logs) == 2  # epochs 3 and 4 only
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    with pytest.raises(ValueError, match="sigma: 0.5 in the checkpoint, 0.25 now"):
        train(_config(train_spec, tmp_path / "resumed", epochs=5, sigma=0.25), log=logs.append)


def test_two_ray_train_workers(digits, tmp_path):
    import ray

    train_spec, test_spec = digits
    try:
        metrics = train(_config(train_spec, tmp_path / "ddp", epochs=10, num_workers=2), log=lambda m: None)
    finally:
        ray.shutdown()
    assert metrics["epoch"] == 9
    loaded = load_model(checkpoint=tmp_path / "ddp" / "checkpoint.pt")
    test = load_samples(expand_shards(test_spec), "none")
    assert noisy_accuracy(loaded.model, test, sigma=0.5, seed=2) > 0.4
