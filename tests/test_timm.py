"""`--model timm:NAME` with a checkpoint file (torch or safetensors): timm's own normalisation and
input size, the class count from the head, and a certify job through the command line."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from rscert.cli import main
from rscert.models.load import ModelError, Normalize, load_model

from .jobutil import certify_args, table
from .shardutil import write_shards

NAME = "resnet10t"


@pytest.fixture(scope="module")
def timm_net():
    torch.manual_seed(5)
    return timm.create_model(NAME, pretrained=False, num_classes=4).eval()


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_timm_checkpoint_loads_with_timms_normalisation(tmp_path, timm_net, fmt):
    path = tmp_path / f"model.{fmt}"
    state = {k: v.contiguous() for k, v in timm_net.state_dict().items()}
    save_file(state, path) if fmt == "safetensors" else torch.save(state, path)
    loaded = load_model(f"timm:{NAME}", str(path))
    assert loaded.num_classes == 4 and loaded.normalize == "timm"  # classes from the head (fc), not guessed
    assert loaded.input_size == (176, 176)  # timm's declared input
    head = loaded.model[0]
    cfg = timm.data.resolve_data_config({}, model=timm_net)
    assert isinstance(head, Normalize)
    assert torch.allclose(head.mean.flatten(), torch.tensor(cfg["mean"])) and torch.allclose(
        head.std.flatten(), torch.tensor(cfg["std"]))
    x = torch.rand(2, 3, 32, 32)
    expected = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), timm_net(expected), atol=1e-5)
    again = load_model(f"timm:{NAME}", str(path))
    assert again.weights_sha256 == loaded.weights_sha256 and len(loaded.checkpoint_sha256) == 64


def test_timm_errors(tmp_path, timm_net):
    with pytest.raises(ModelError, match="timm has no model"):
        load_model("timm:no_such_model_xyz", random_init=True)
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ModelError, match="safetensors"):
        load_model(f"timm:{NAME}", str(path))


def test_certify_a_timm_classifier(tmp_path, timm_net):
    write_shards(tmp_path / "data", shards=1, per_shard=4, size=32)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in timm_net.state_dict().items()}, path)
    out = tmp_path / "out"
    args = certify_args(str(tmp_path / "data" / "data-000000.tar"), out, model=f"timm:{NAME}", checkpoint=str(path),
                        **{"random-init": None, "n": 100, "n0": 20, "batch-size": 60})
    assert main(args) == 0
    df = table(out)
    assert df.height == 4 and (df["status"] == "ok").all() and (df["model"] == f"timm:{NAME}").all()
    assert (df["num_classes"] == 4).all()
