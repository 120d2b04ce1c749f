"""Where a model's weights come from, recorded honestly (issue 22 item 8): a module:factory that loads its
own weights (--weights-from-factory, with --model-args), and torchvision's named weights from the local
torch hub cache (never downloaded). Real shards, real Parquet, the real CLI in-process."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
import torchvision

from rscert.cli import main

from .jobutil import certify_args, table
from .shardutil import write_shards
from .zoo import tiny_cnn


@pytest.fixture
def data(tmp_path):
    write_shards(tmp_path / "data", shards=1, per_shard=4, size=24)
    return str(tmp_path / "data" / "data-000000.tar")


def _args(data, out, **settings):
    return certify_args(data, out, **{"random-init": None, "n": 100, "n0": 20, **settings})


def _manifest(out) -> dict:
    return json.loads((out / "_rscert_manifest.json").read_text())


def test_a_factory_that_loads_its_weights_is_certified_and_recorded_as_such(data, tmp_path, capsys):
    weights = tmp_path / "trained.pt"
    torch.save(tiny_cnn().state_dict(), weights)
    factory = {"model": "tests.zoo:cnn_from_file", "model-args": json.dumps({"path": str(weights)})}
    assert main(_args(data, tmp_path / "refused", **factory)) == 2
    assert "--weights-from-factory" in capsys.readouterr().err
    out = tmp_path / "factory"
    assert main(_args(data, out, **factory, **{"weights-from-factory": True})) == 0
    manifest = _manifest(out)
    assert manifest["config"]["random_init"] is False and manifest["config"]["weights_from_factory"] is True
    assert manifest["model"]["weights"] == "factory"
    assert manifest["result_fields"]["model_args"] == {"path": str(weights)}
    # the same weights through a checkpoint: the same classifier, so the same rows
    same = tmp_path / "checkpoint"
    assert main(_args(data, same, model="tests.zoo:tiny_cnn", checkpoint=str(weights))) == 0
    assert _manifest(same)["model"]["weights_sha256"] == manifest["model"]["weights_sha256"]
    cols = ["index", "prediction", "count_top", "radius"]
    assert table(out).select(cols).equals(table(same).select(cols))


def test_model_args_reach_the_factory_and_bad_ones_are_named(data, tmp_path, capsys):
    assert main(_args(data, tmp_path / "a", model="tests.zoo:tiny_cnn", **{"random-init": True,
                                                                            "model-args": '{"nope": 1}'})) == 2
    assert "model-args" in capsys.readouterr().err
    assert main(_args(data, tmp_path / "b", model="resnet18", **{"random-init": True,
                                                                 "model-args": '{"x": 1}'})) == 2
    assert "only a 'package.module:factory' model takes arguments" in capsys.readouterr().err


def test_torchvision_named_weights_load_from_the_local_hub_cache_only(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision.models.get_model_weights("resnet18")["IMAGENET1K_V1"]
    cached = tmp_path / "torch" / "hub" / "checkpoints" / os.path.basename(weights.url)
    assert main(_args(data, tmp_path / "missing", model="resnet18:IMAGENET1K_V1")) == 2
    err = capsys.readouterr().err
    assert str(cached) in err and "never downloads" in err
    # a file in the cache (here a seeded resnet18's state dict, standing in for the published one)
    cached.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), cached)
    out = tmp_path / "named"
    assert main(_args(data, out, model="resnet18:DEFAULT", **{"batch-size": 120})) == 0
    manifest = _manifest(out)
    assert manifest["model"]["spec"] == "resnet18:IMAGENET1K_V1"  # DEFAULT resolved and recorded
    assert manifest["model"]["weights"] == "torchvision ResNet18_Weights.IMAGENET1K_V1"
    assert manifest["model"]["checkpoint_sha256"] == hashlib.sha256(cached.read_bytes()).hexdigest()
    assert manifest["model"]["normalize"] == "imagenet" and manifest["model"]["num_classes"] == 1000
    assert table(out)["model"].unique().to_list() == ["resnet18:IMAGENET1K_V1"]
