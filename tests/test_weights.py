"""A model without weights is refused unless seeded; the weights actually built are fingerprinted, and
a worker that builds other weights commits nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from rscert.cli import main
from rscert.config.certify import CertifyConfig
from rscert.models.load import ModelError, load_model, weights_sha256
from rscert.run.prepare import prepare
from rscert.run.report import summarize
from rscert.run.worker import UnitWorker
from rscert.store.results import Store, table_from_rows

from .jobutil import ROOT, certify_args, env
from .shardutil import write_shards


@pytest.fixture
def shards(tmp_path):
    write_shards(tmp_path / "data", shards=2, per_shard=4)
    return str(tmp_path / "data" / "data-{000000..000001}.tar")


@pytest.mark.parametrize("spec", ["cifar_resnet20", "resnet18", "tests.zoo:tiny_cnn"])
def test_no_checkpoint_is_refused_unless_random_init(spec):
    with pytest.raises(ModelError, match=r"--checkpoint.*--random-init"):
        load_model(spec, num_classes=10)
    assert load_model(spec, num_classes=10, random_init=True).checkpoint is None


def test_the_command_refuses_a_model_without_weights(tmp_path, shards, capsys):
    out = tmp_path / "out"
    assert main(certify_args(shards, out, model="cifar_resnet20", **{"random-init": None})) == 2
    assert "--random-init" in capsys.readouterr().err
    assert not out.exists()


def test_random_init_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = load_model("cifar_resnet20", num_classes=10, random_init=True)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(456)  # another global state: the same network
    b = load_model("cifar_resnet20", num_classes=10, random_init=True)
    assert a.weights_sha256 == b.weights_sha256
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    # and in another process
    code = ("from rscert.models.load import load_model;"
            "print(load_model('cifar_resnet20', num_classes=10, random_init=True).weights_sha256)")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env(),
                           check=True)
    assert other.stdout.strip() == a.weights_sha256


def test_weights_hash_sees_every_tensor_and_buffer():
    base = load_model("cifar_resnet20", num_classes=10, normalize="cifar", random_init=True).model
    h = weights_sha256(base)
    with torch.no_grad():
        w = base[1].linear.weight if hasattr(base[1], "linear") else next(base[1].parameters())
        w.view(-1)[0] = torch.nextafter(w.view(-1)[0], torch.tensor(10.0))  # one ulp
    assert weights_sha256(base) != h
    bn = next(m for m in base.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = weights_sha256(base)
    bn.running_var[0] += 1  # a buffer
    assert weights_sha256(base) != before
    other_norm = load_model("cifar_resnet20", num_classes=10, normalize="imagenet", random_init=True)
    assert other_norm.weights_sha256 != h  # the (non-persistent) normalisation is part of the function


def test_weights_hash_in_the_manifest_and_fingerprint(tmp_path, shards, capsys):
    out = tmp_path / "out"
    assert main(certify_args(shards, out, max=2)) == 0
    manifest = json.loads((out / "_rscert_manifest.json").read_text())
    expected = load_model("tests.zoo:tiny_cnn", random_init=True).weights_sha256
    assert manifest["model"]["weights_sha256"] == manifest["result_fields"]["weights_sha256"] == expected


def test_a_worker_with_other_weights_commits_nothing(tmp_path, shards, capsys):
    config = CertifyConfig(data=shards, out=str(tmp_path / "out"), model="tests.zoo:unseeded_cnn", random_init=True,
                           sigma=0.5, n0=10, n=20, unit_size=2)
    job = prepare(config, log=lambda m: None)
    with pytest.raises(ModelError, match="weights"):
        UnitWorker(config, job.run)
    # through the command: local mode certifies with the one model prepare() built; a resume builds
    # another network, whose weights hash differs, so it is refused before anything is certified
    out = tmp_path / "cli"
    assert main(certify_args(shards, out, model="tests.zoo:unseeded_cnn", max=2)) == 0
    committed = sorted((out / "units").glob("*.parquet"))
    capsys.readouterr()
    assert main(certify_args(shards, out, model="tests.zoo:unseeded_cnn")) == 2
    text = capsys.readouterr()
    assert "another configuration" in text.err and "weights_sha256" in text.err
    assert sorted((out / "units").glob("*.parquet")) == committed


def test_failed_rows_stay_in_the_denominator(tmp_path):
    """4 inputs, 2 failed: certified accuracy at r = 0 is 2/4, not 2/2."""
    store = Store(str(tmp_path / "out"))
    store.create_folders()
    ok = {"run_id": "r", "status": "ok", "prediction": 1, "label": 1, "correct": True, "radius": 0.3}
    bad = {"run_id": "r", "status": "decode_error", "error": "x", "label": 1}
    store.commit_unit("u0", table_from_rows([ok, bad], {}))
    store.commit_unit("u1", table_from_rows([ok, bad], {}))
    s = summarize(store)
    assert s["inputs"] == 4 and s["failed"] == 2 and s["certified_accuracy"][0.0] == 0.5
    assert s["certified_accuracy"][0.5] == 0.0
    # a unit that never committed counts too: 6 selected, 4 rows
    s = summarize(store, units=["u0", "u1"], selected=6)
    assert s["inputs"] == 6 and s["failed"] == 4 and s["certified_accuracy"][0.0] == pytest.approx(2 / 6)
    assert summarize(store, units=["u0"], selected=2)["certified_accuracy"][0.0] == 0.5
