"""Model loading from small checkpoints written here, in every supported format."""

import textwrap

import pytest
import torch
from torch import nn

from rscert.models.load import ModelError, Normalize, load_model, save_checkpoint, wrap


def _same_function(a: nn.Module, b: nn.Module, shape=(2, 3, 32, 32)):
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(a.eval()(x), b.eval()(x), atol=1e-6)


def _reference(arch="resnet18", classes=7, normalize="imagenet"):
    loaded = load_model(arch, num_classes=classes, normalize=normalize, random_init=True)
    torch.manual_seed(1)
    for p in loaded.model.parameters():  # not the default init: loading must really copy
        p.data.normal_(0, 0.05)
    return loaded.model


def test_torchvision_name_and_plain_state_dict(tmp_path):
    ref = _reference()
    path = tmp_path / "plain.pt"
    torch.save(ref[1].state_dict(), path)
    loaded = load_model("resnet18", checkpoint=path)
    assert loaded.num_classes == 7  # inferred from the checkpoint's last linear layer
    assert loaded.normalize == "imagenet" and len(loaded.checkpoint_sha256) == 64
    assert isinstance(loaded.model[0], Normalize)
    _same_function(loaded.model, ref)


class _DataParallelLike(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module


def test_published_format_with_module_prefix(tmp_path):
    ref = _reference("resnet18", 10)
    published = nn.Sequential(ref[0], _DataParallelLike(ref[1]))
    state = published.state_dict()
    assert next(iter(state)).startswith("1.module.")
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"arch": "resnet18", "state_dict": state, "epoch": 90}, path)
    loaded = load_model(checkpoint=path)  # the architecture comes from the checkpoint
    assert loaded.spec == "resnet18" and loaded.num_classes == 10
    _same_function(loaded.model, ref)


def test_published_cifar_format_without_module_prefix(tmp_path):
    ref = _reference("cifar_resnet20", 10, "cifar")
    path = tmp_path / "c.pth.tar"
    torch.save({"arch": "cifar_resnet20", "state_dict": ref.state_dict()}, path)
    loaded = load_model(checkpoint=path)
    assert loaded.normalize == "cifar"
    _same_function(loaded.model, ref)


def test_rscert_checkpoint_round_trip(tmp_path):
    ref = _reference("cifar_resnet20", 4, "cifar")
    save_checkpoint(tmp_path / "m.pt", ref, "cifar_resnet20", 4, "cifar", epoch=3)
    loaded = load_model(checkpoint=tmp_path / "m.pt")
    assert (loaded.spec, loaded.num_classes, loaded.normalize) == ("cifar_resnet20", 4, "cifar")
    _same_function(loaded.model, ref)


def test_module_factory(tmp_path, monkeypatch):
    (tmp_path / "userzoo").mkdir()
    (tmp_path / "userzoo" / "__init__.py").write_text("")
    (tmp_path / "userzoo" / "nets.py").write_text(
        textwrap.dedent(
            """
            from torch import nn
            def make(num_classes=3):
                return nn.Sequential(nn.Flatten(), nn.Linear(12, num_classes))
            def not_a_model():
                return 42
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_model("userzoo.nets:make", num_classes=5, random_init=True)
    assert loaded.normalize == "none"
    assert loaded.model(torch.rand(2, 3, 2, 2)).shape == (2, 5)
    torch.save(loaded.model[1].state_dict(), tmp_path / "f.pt")
    again = load_model("userzoo.nets:make", checkpoint=tmp_path / "f.pt")
    _same_function(again.model, loaded.model, shape=(2, 3, 2, 2))
    with pytest.raises(ModelError, match="not a torch.nn.Module"):
        load_model("userzoo.nets:not_a_model")
    with pytest.raises(ModelError, match="no attribute"):
        load_model("userzoo.nets:missing")
    with pytest.raises(ModelError, match="cannot import"):
        load_model("no_such_pkg_xyz.mod:f")


class Payload:  # a class torch's weights-only unpickler does not allow
    def __init__(self):
        self.x = 1


def test_pickled_checkpoint_is_refused_unless_trusted(tmp_path):
    ref = _reference("resnet18", 3)
    path = tmp_path / "pickled.pt"
    torch.save({"arch": "resnet18", "state_dict": ref.state_dict(), "extra": Payload()}, path)
    with pytest.raises(ModelError, match="--trust-checkpoint"):
        load_model(checkpoint=path)
    loaded = load_model(checkpoint=path, trust_checkpoint=True)
    _same_function(loaded.model, ref)


def test_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="unknown architecture 'resnet_nope'"):
        load_model("resnet_nope")
    ref = _reference("resnet18", 7)
    torch.save(ref[1].state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ModelError, match="size mismatch"):
        load_model("resnet18", checkpoint=tmp_path / "sd.pt", num_classes=5)
    state = ref[1].state_dict()
    del state["layer1.0.conv1.weight"]
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(ModelError, match="Missing key"):
        load_model("resnet18", checkpoint=tmp_path / "missing.pt")
    state = ref[1].state_dict()
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "unexpected.pt")
    with pytest.raises(ModelError, match="Unexpected key"):
        load_model("resnet18", checkpoint=tmp_path / "unexpected.pt")
    with pytest.raises(ModelError, match="no such file"):
        load_model("resnet18", checkpoint=tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read"):
        load_model("resnet18", checkpoint=tmp_path / "junk.pt")
    with pytest.raises(ModelError, match="checkpoint was saved for arch"):
        torch.save({"arch": "resnet34", "state_dict": {}}, tmp_path / "other.pt")
        load_model("resnet18", checkpoint=tmp_path / "other.pt")
    with pytest.raises(ModelError, match="normalize"):
        wrap(nn.Identity(), "mnist")
