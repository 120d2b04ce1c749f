"""--noise and --norm through every job: certify (fixed and sequential), predict, resume, analyze,
train; bad combinations refused naming the field; rs4a outputs imported."""

from __future__ import annotations

import argparse
import pickle

import numpy as np
import polars as pl
import pytest
import torch

from rscert.analysis.aggregate import analyze
from rscert.analysis.import_logs import import_logs
from rscert.analysis.plots import write_plots
from rscert.analysis.tables import markdown_table
from rscert.cli import main
from rscert.config.certify import CertifyConfig, fingerprint
from rscert.config.train import TrainConfig
from rscert.constants import NOISE_VERSION
from rscert.sampling.draws import unit_noise_like
from rscert.stats.families import family
from rscert.stats.smoothing import clopper_pearson_lower

from .jobutil import certify_args, table
from .shardutil import write_shards


@pytest.fixture
def shards(tmp_path):
    write_shards(tmp_path / "data", shards=2, per_shard=6)
    return str(tmp_path / "data" / "data-{000000..000001}.tar")


def test_laplace_l1_rows_resume_and_analysis(tmp_path, shards, capsys):
    out = tmp_path / "lap"
    assert main(certify_args(shards, out, noise="laplace", max=8)) == 0
    first = table(out)
    assert first.height == 8
    assert set(first["noise"]) == {"laplace"} and set(first["norm"]) == {"l1"}
    assert set(first["bound"]) == {"pa"} and set(first["vote"]) == {"hard"}
    dim = int(first["dim"][0])
    assert dim == 3 * 16 * 16  # the test shards hold 16 x 16 RGB images
    fam = family("laplace")
    ok = first.filter(pl.col("prediction") != -1)
    assert ok.height > 0
    for row in ok.iter_rows(named=True):  # the family's formula of the stored bound and counts
        p = float(clopper_pearson_lower(row["count_top"], row["n"], row["alpha"]))
        assert row["p_lower"] == pytest.approx(p)
        assert row["radius"] == pytest.approx(float(fam.radius(p, 0.5, "l1")))
    # resume: the same settings continue the run; a different norm is another configuration
    assert main(certify_args(shards, out, noise="laplace")) == 0
    again = table(out)
    assert again.height == 12 and again.filter(pl.col("index") < 8).equals(first.filter(pl.col("index") < 8))
    assert main(certify_args(shards, out, noise="laplace", norm="l2")) == 2
    assert "norm" in capsys.readouterr().err
    # Gaussian beside it: two configurations, labelled with the family and the norm, never one axis
    gauss = tmp_path / "gauss"
    assert main(certify_args(shards, gauss)) == 0
    result = analyze([str(out), str(gauss)], radii=[0.0, 0.25])
    assert sorted(result.summary["norm"].to_list()) == ["l1", "l2"]
    text = markdown_table(result)
    assert "laplace noise, sigma = 0.50, l1 radii" in text and "l2 radii" in text
    assert "(radii in each row's norm)" in text
    assert set(result.envelope["norm"]) == {"l1", "l2"}
    figures = [p.rsplit("/", 1)[1] for p in write_plots(result, tmp_path / "fig")]
    assert "comparison_l1.png" in figures and "comparison.png" in figures
    assert any(f.endswith("_l1.png") and f.startswith("certified_accuracy_") for f in figures)
    # re-bounding at another alpha applies each row's own formula
    rebound = analyze([str(out)], radii=[0.0], alpha=0.01).summary
    assert rebound["inputs"][0] == 12


def test_uniform_linf_sequential_and_gaussian_fingerprint_unchanged(tmp_path, shards):
    out = tmp_path / "seq"
    assert main(certify_args(shards, out, noise="uniform", norm="linf", sampling="sequential", n=1000)) == 0
    rows = table(out)
    assert set(rows["norm"]) == {"linf"} and (rows["n"] <= 1000).all()
    fam = family("uniform")
    for row in rows.filter(pl.col("prediction") != -1).iter_rows(named=True):
        assert row["radius"] == pytest.approx(float(fam.radius(row["p_lower"], 0.5, "linf", dim=row["dim"])))
    # the Gaussian l2 fingerprint is the one runs had before noise families existed
    cfg = CertifyConfig(data="x.tar", out="o", model="m", sigma=0.25, seed=0)
    fields = cfg.result_fields({})
    assert fields["noise_version"] == NOISE_VERSION and fields["noise"] == "gaussian"
    assert not {"norm", "bound", "vote"} & set(fields)
    lap = CertifyConfig(data="x.tar", out="o", model="m", sigma=0.25, noise="laplace", seed=0).result_fields(
                                                                                                          {})
    assert lap["noise_version"] == family("laplace").version and lap["norm"] == "l1"
    assert fingerprint(lap) != fingerprint(fields)


@pytest.mark.parametrize(("noise", "norm"), [(f, n) for f in ("gaussian", "laplace", "uniform")
                                              for n in ("l1", "l2", "linf")])
def test_every_family_and_norm_certifies_sequentially_resumes_and_analyses(tmp_path, shards, capsys, noise, norm):
    out = tmp_path / "run"
    args = certify_args(shards, out, noise=noise, norm=norm, sampling="sequential", n=300, max=4)
    assert main(args) == 0
    rows = table(out)
    assert rows.height == 4 and set(rows["noise"]) == {noise} and set(rows["norm"]) == {norm}
    fam = family(noise)
    for row in rows.iter_rows(named=True):
        expected = float(fam.radius(row["p_lower"], 0.5, norm, dim=row["dim"])) if row["prediction"] != -1 else 0.0
        assert row["radius"] == pytest.approx(expected)
    capsys.readouterr()
    assert main(args) == 0  # resume: nothing left to run, the same rows
    assert "0 to run" in capsys.readouterr().err and table(out).equals(rows)
    summary = analyze([str(out)], radii=[0.0]).summary
    assert summary["norm"].to_list() == [norm] and summary["inputs"].to_list() == [4]


def test_predict_with_uniform_noise(tmp_path, shards):
    out = tmp_path / "pred"
    args = certify_args(shards, out, noise="uniform", n=200, max=4, n0=None)
    assert main(["predict", *args[1:]]) == 0
    rows = table(out)
    assert set(rows["noise"]) == {"uniform"} and set(rows["mode"]) == {"predict"}


@pytest.mark.parametrize(("flags", "field"), [
    ({"noise": "cauchy"}, "noise"),
    ({"norm": "l3"}, "norm"),
    ({"bound": "top3"}, "bound"),
    ({"vote": "maybe"}, "vote"),
    ({"noise": "laplace", "sampling": "sequential", "radii": "0 5"}, "radii"),
])
def test_bad_combinations_are_refused_naming_the_field(tmp_path, shards, capsys, flags, field):
    assert main(certify_args(shards, tmp_path / "bad", **flags)) == 2
    err = capsys.readouterr().err
    assert f"{field}:" in err, err
    assert not (tmp_path / "bad" / "units").exists()


def test_training_noise_has_each_familys_law_at_unit_variance():
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(200_000)
    for name in ("gaussian", "laplace", "uniform"):
        draw = unit_noise_like(x, name, generator=gen).double().numpy()
        assert abs(draw.var() - 1) < 0.02 and abs(draw.mean()) < 0.01
    lap = unit_noise_like(x, "laplace", generator=gen).double().numpy()
    assert abs(np.mean(np.abs(lap)) - 1 / np.sqrt(2)) < 0.01  # E|e| = scale for Laplace
    uni = unit_noise_like(x, "uniform", generator=gen).double().numpy()
    assert np.abs(uni).max() <= np.sqrt(3)
    with pytest.raises(ValueError, match="noise"):
        TrainConfig(data="x", model="small_cnn", num_classes=10, out="o", sigma=0.5, noise="cauchy")


def _rs4a_experiment(folder, noise="Laplace", sigma=0.5, n=12, skip=2):
    """An rs4a experiment folder as src/test.py and src/train.py leave it: args.pkl (the argparse
    Namespace) and one .npy per result column."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    args = argparse.Namespace(noise=noise, sigma=sigma, lambd=None, k=None, j=None, a=None, dataset="cifar",
                              dataset_skip=skip, sample_size_pred=64, sample_size_cert=100_000, model="WideResNet")
    (folder / "args.pkl").write_bytes(pickle.dumps(args))
    preds = rng.dirichlet(np.ones(10), size=n)
    labels = preds.argmax(1).astype(float)
    labels[:3] = (labels[:3] + 1) % 10  # three wrong
    prob_lb = rng.uniform(0.3, 0.999, size=n)
    np.save(folder / "preds.npy", preds)
    np.save(folder / "labels.npy", labels)
    np.save(folder / "prob_lb.npy", prob_lb)
    fam = family(noise.lower())
    for norm in ("l1", "l2", "linf"):  # what rs4a stores: its formulas, also below 1/2
        np.save(folder / f"radius_{norm}.npy", np.array([float(fam.radius(p, sigma, norm, dim=3072)) for p in prob_lb]))
    return preds, labels, prob_lb


def test_rs4a_outputs_import_one_configuration_per_norm(tmp_path):
    preds, labels, prob_lb = _rs4a_experiment(tmp_path / "ckpts" / "cifar_laplace_0.5")
    written = import_logs([str(tmp_path / "ckpts")], str(tmp_path / "imported"))
    assert len(written) == 3
    rows = pl.read_parquet(written).sort("norm", "index")
    assert set(rows["noise"]) == {"laplace"} and sorted(set(rows["norm"])) == ["l1", "l2", "linf"]
    l1 = rows.filter(pl.col("norm") == "l1")
    assert l1["index"].to_list() == list(range(0, 24, 2))  # dataset_skip 2
    assert l1["p_lower"].to_list() == pytest.approx(prob_lb.tolist())
    certified = prob_lb >= 0.5
    assert (l1["prediction"].to_numpy() == np.where(certified, preds.argmax(1), -1)).all()
    fam = family("laplace")
    assert l1["radius"].to_list() == pytest.approx([float(fam.radius(p, 0.5, "l1")) if c else 0.0
                                                    for p, c in zip(prob_lb, certified, strict=True)])
    assert set(rows["alpha"]) == {0.0005} and set(rows["n"]) == {100_000} and set(rows["n0"]) == {64}
    assert set(rows["dim"]) == {3072}
    result = analyze([str(tmp_path / "imported")], radii=[0.0, 0.5])
    assert result.summary.height == 3 and result.summary["inputs"].to_list() == [12, 12, 12]
    correct = (preds.argmax(1) == labels) & certified
    row = result.summary.filter(pl.col("norm") == "l1")
    assert row["cert_acc_0"][0] == pytest.approx(correct.mean())
