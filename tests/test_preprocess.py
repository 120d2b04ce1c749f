"""Configurable preprocessing (--resize, --crop, --interpolation) for models that are not 256/224:
the decoded tensors equal torchvision's own Resize + CenterCrop, runs record what they used, and the
presets' defaults keep their old fingerprints. Real shards, the real CLI."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from torchvision import transforms
from webdataset import TarWriter

from rscert.cli import main
from rscert.config.certify import CertifyConfig
from rscert.data.decode import decode_input

from .jobutil import certify_args, table


def _png(seed: int, size=(40, 30)) -> bytes:
    array = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _oracle(data: bytes, resize: int, crop: int, mode) -> torch.Tensor:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    return transforms.ToTensor()(transforms.CenterCrop(crop)(transforms.Resize(resize, interpolation=mode)(img)))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_decoding_equals_torchvision_resize_and_crop(interpolation):
    data = _png(1)
    config = CertifyConfig(data="x", out="y", model="m", sigma=0.5, preset="cifar", resize=20, crop=16,
                           interpolation=interpolation)
    got = decode_input({"png": data}, config.preprocess())
    want = _oracle(data, 20, 16, transforms.InterpolationMode[interpolation.upper()])
    assert got.shape == (3, 16, 16) and torch.equal(got, want)


def test_the_presets_defaults_are_the_presets_and_overrides_are_recorded():
    base = dict(data="x", out="y", model="m", sigma=0.5)
    assert CertifyConfig(**base, preset="imagenet", resize=256, crop=224, interpolation="bilinear").preprocess() \
        == "imagenet"
    assert CertifyConfig(**base, preset="imagenet", resize=232, interpolation="bicubic").preprocess() \
        == "imagenet; resize 232; bicubic"
    plain = CertifyConfig(**base, preset="imagenet", seed=0).result_fields({})
    assert plain["preset"] == "imagenet"  # fingerprints of earlier runs are unchanged
    with pytest.raises(ValidationError, match="crop: 300 is larger than --resize 256"):
        CertifyConfig(**base, resize=256, crop=300)


def test_a_run_with_its_own_preprocessing_certifies_and_records_it(tmp_path):
    shard = tmp_path / "data-000000.tar"
    with TarWriter(str(shard)) as sink:
        for i in range(4):
            sink.write({"__key__": f"k{i}", "png": _png(i), "cls": b"1"})
    out = tmp_path / "out"
    args = certify_args(str(shard), out, n=60, n0=20, resize=24, crop=20, interpolation="bicubic")
    assert main(args) == 0
    rows = table(out)
    assert rows["status"].to_list() == ["ok"] * 4
    assert rows["preset"].unique().to_list() == ["none; resize 24; crop 20; bicubic"]
    manifest = json.loads((out / "_rscert_manifest.json").read_text())
    assert manifest["result_fields"]["preset"] == "none; resize 24; crop 20; bicubic"
    assert manifest["config"]["resize"] == 24
    # another crop is another configuration: refused into the same folder
    assert main(certify_args(str(shard), out, n=60, n0=20, resize=24, crop=16, interpolation="bicubic")) == 2
