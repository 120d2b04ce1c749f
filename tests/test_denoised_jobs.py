"""`--denoiser` on certify and predict, end to end on real shards: the base classifier is f∘d, the
denoiser is part of the run's identity, and rows and manifest record it."""

from __future__ import annotations

import json

import pytest
import torch

from rscert.cli import main
from rscert.config.certify import CertifyConfig
from rscert.models.denoiser_archs import DnCNN
from rscert.models.denoisers import load_denoiser
from rscert.models.load import ModelError
from rscert.run.worker import UnitWorker

from .jobutil import certify_args, table
from .shardutil import write_shards

STATS = ["index", "label", "prediction", "top_class", "count_select", "count_top", "p_lower", "radius", "correct"]


@pytest.fixture
def shards(tmp_path):
    write_shards(tmp_path / "data", shards=2, per_shard=6)
    return str(tmp_path / "data" / "data-{000000..000001}.tar")


def test_identity_denoiser_gives_the_same_rows_as_none(tmp_path, shards):
    assert main(certify_args(shards, tmp_path / "plain")) == 0
    assert main(certify_args(shards, tmp_path / "identity", denoiser="tests.zoo:identity_denoiser")) == 0
    plain, behind = table(tmp_path / "plain"), table(tmp_path / "identity")
    assert behind.height == 12 and (behind["status"] == "ok").all()
    assert behind.select(STATS).equals(plain.select(STATS))
    assert plain["denoiser"].is_null().all() and (behind["denoiser"] == "tests.zoo:identity_denoiser").all()
    expected = load_denoiser("tests.zoo:identity_denoiser", sigma=0.5).weights_sha256
    assert (behind["denoiser_sha256"] == expected).all()
    manifest = json.loads((tmp_path / "identity" / "_rscert_manifest.json").read_text())
    assert manifest["model"]["denoiser"]["kind"] == "factory"
    assert manifest["result_fields"]["denoiser_sha256"] == expected
    assert "denoiser_sha256" not in json.loads((tmp_path / "plain" / "_rscert_manifest.json").read_text())[
        "result_fields"]  # runs without a denoiser keep the fingerprint fields they always had


def test_identity_denoiser_predict(tmp_path, shards):
    args = {"n": 300, "n0": None}
    assert main(["predict", *certify_args(shards, tmp_path / "p0", **args)[1:]]) == 0
    assert main(["predict", *certify_args(shards, tmp_path / "p1", denoiser="tests.zoo:identity_denoiser",
                                          **args)[1:]]) == 0
    cols = ["index", "prediction", "top_class", "count_top", "count_second", "p_value"]
    assert table(tmp_path / "p1").select(cols).equals(table(tmp_path / "p0").select(cols))
    assert (table(tmp_path / "p1")["mode"] == "predict").all()


def test_a_different_denoiser_into_the_same_output_is_refused(tmp_path, shards, capsys):
    out = tmp_path / "out"
    assert main(certify_args(shards, out, denoiser="tests.zoo:identity_denoiser")) == 0
    before = table(out)
    capsys.readouterr()
    assert main(certify_args(shards, out, denoiser="tests.zoo:blur_denoiser")) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "denoiser_sha256" in err
    assert main(certify_args(shards, out)) == 2  # nor no denoiser at all
    assert "denoiser_sha256" in capsys.readouterr().err
    assert main(certify_args(shards, out, denoiser="tests.zoo:identity_denoiser")) == 0  # the same resumes
    assert "0 to run" in capsys.readouterr().err
    assert table(out).equals(before)


def test_constant_denoiser_gives_a_constant_smoothed_classifier(tmp_path, shards):
    out = tmp_path / "const"
    assert main(certify_args(shards, out, denoiser="tests.zoo:constant_denoiser")) == 0
    df = table(out)
    assert df["top_class"].n_unique() == 1 and (df["count_select"] == 40).all() and (df["count_top"] == 400).all()
    assert df["prediction"].n_unique() == 1 and (df["radius"] > 0).all()  # every input, the same certificate


def test_published_checkpoint_as_denoiser(tmp_path, shards, capsys):
    net = DnCNN(3, 8, 4).eval()
    with torch.no_grad():
        net.dncnn[-1].weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "dncnn.pth.tar"
    torch.save({"arch": "imagenet_dncnn", "state_dict": torch.nn.DataParallel(net).state_dict()}, path)
    out = tmp_path / "dn"
    assert main(certify_args(shards, out, denoiser=str(path))) == 0
    df = table(out)
    assert (df["status"] == "ok").all() and (df["denoiser"] == str(path)).all()
    facts = json.loads((out / "_rscert_manifest.json").read_text())["model"]["denoiser"]
    assert facts["arch"] == "imagenet_dncnn" and len(facts["checkpoint_sha256"]) == 64
    capsys.readouterr()
    assert main(certify_args(shards, tmp_path / "missing", denoiser=str(tmp_path / "nope.pt"))) == 2
    assert "no such file" in capsys.readouterr().err and not (tmp_path / "missing" / "units").exists()


def test_worker_refuses_a_denoiser_other_than_the_runs(tmp_path, shards):
    config = CertifyConfig(data=shards, out=str(tmp_path / "w"), model="tests.zoo:tiny_cnn", random_init=True,
                           sigma=0.5, seed=0, denoiser="tests.zoo:blur_denoiser")
    from rscert.models.load import load_model

    loaded = load_model("tests.zoo:tiny_cnn", random_init=True)
    run = {"run_id": "r", "fingerprint": "f", "weights_sha256": loaded.weights_sha256,
           "denoiser_sha256": load_denoiser("tests.zoo:blur_denoiser", sigma=0.25).weights_sha256}
    with pytest.raises(ModelError, match="another base classifier"):
        UnitWorker(config, run)  # sigma 0.5 builds another blur than the run's (sigma 0.25)
    run["denoiser_sha256"] = load_denoiser("tests.zoo:blur_denoiser", sigma=0.5).weights_sha256
    assert UnitWorker(config, run).model.denoiser is not None
