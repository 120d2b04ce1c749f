"""`rscert predict`: PREDICT jobs over real tar shards (rows, p-values, abstain rule, resume, CLI)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError
from scipy.stats import binomtest

from rscert.cli import main
from rscert.config.certify import CertifyConfig
from rscert.store.results import Store

from .jobutil import certify_args, run, table
from .shardutil import write_shards

ALPHA = 0.001


def predict_args(data: str, out, **overrides) -> list[str]:
    args = certify_args(data, out, **{"n": 30, **overrides})
    args[0] = "predict"
    i = args.index("--n0")  # PREDICT has no selection phase: no --n0
    del args[i : i + 2]
    return args


@pytest.fixture
def shards(tmp_path):
    write_shards(tmp_path / "data", shards=3, per_shard=10)
    return str(tmp_path / "data" / "data-{000000..000002}.tar")


def test_predict_rows_p_values_and_abstain_rule(tmp_path, shards):
    out = tmp_path / "out"
    assert main(predict_args(shards, out)) == 0
    df = table(out)
    assert df.height == 30 and df["index"].to_list() == list(range(30))
    assert (df["mode"] == "predict").all() and (df["status"] == "ok").all()
    assert df["radius"].null_count() == 30 and df["n0"].null_count() == 30  # no certificate, no selection
    assert (df["n"] == 30).all() and (df["alpha"] == ALPHA).all()
    assert ((df["count_top"] >= df["count_second"]) & (df["count_top"] + df["count_second"] <= 30)).all()
    # the p-value is scipy's exact two-sided binomial test of the top two counts against 1/2
    for row in df.iter_rows(named=True):
        expect = binomtest(row["count_top"], row["count_top"] + row["count_second"], 0.5).pvalue
        assert row["p_value"] == pytest.approx(expect, rel=1e-12, abs=0)
        # the abstain rule: -1 exactly when p > alpha, else the top class
        assert row["prediction"] == (-1 if row["p_value"] > ALPHA else row["top_class"])
        assert row["correct"] == (row["prediction"] != -1 and row["prediction"] == row["label"])
    # both branches of the rule occur in this data (n = 30 leaves some inputs undecided)
    assert 0 < (df["prediction"] == -1).sum() < 30


def test_predict_resumes_and_keeps_certify_apart(tmp_path, shards, capsys):
    out = tmp_path / "out"
    assert main(predict_args(shards, out)) == 0
    before = table(out)
    manifest = json.loads((out / "_rscert_manifest.json").read_text())
    assert manifest["result_fields"]["mode"] == "predict" and manifest["result_fields"]["n0"] is None
    units = sorted((out / "units").glob("*.parquet"))
    for path in units[:2]:
        path.unlink()
    executions = len(Store(str(out)).executions())
    capsys.readouterr()
    assert main(predict_args(shards, out)) == 0
    assert "7 already committed, 2 to run" in capsys.readouterr().err
    assert len(Store(str(out)).executions()) == executions + 2  # only the missing units ran
    # identical rows (but the timing): noise is a function of (seed, input, phase)
    after = table(out)
    assert after.drop("seconds").equals(before.drop("seconds"))
    # certify rows never land in a predict folder
    assert main(certify_args(shards, out, n=30)) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "mode: 'predict' in the folder, 'certify' now" in err
    assert table(out).equals(after)


def test_predict_settings_that_do_not_apply(tmp_path, shards, capsys):
    """A file for the other mode is refused; CERTIFY-only settings are ignored with a warning, alike on
    the command line and in a file (tests/test_job_outcome.py), so that a certify job file works."""
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"mode: certify\ndata: '{shards}'\nmodel: tests.zoo:tiny_cnn\nsigma: 0.5\nout: {tmp_path / 'b'}\n")
    assert main(["predict", "--config", str(cfg)]) == 2
    assert "mode: " in capsys.readouterr().err and not (tmp_path / "b").exists()
    with pytest.raises(ValidationError, match="sampling: PREDICT draws n samples"):
        CertifyConfig(mode="predict", data=shards, out=str(tmp_path / "c"), model="m", sigma=0.5,
                      sampling="sequential")


def test_predict_command_in_a_subprocess(tmp_path, shards):
    """The real command, stderr not a terminal: whole progress lines, the accuracy of g on stdout."""
    out = tmp_path / "out"
    result = run(predict_args(shards, out, n=100))
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    assert "predicting: 30/30 inputs (100%)" in result.stderr
    df = table(out)
    accuracy = df["correct"].sum() / df.height
    abstain = (df["prediction"] == -1).sum() / df.height
    assert f"abstain rate {abstain:.3f}" in result.stdout
    assert f"accuracy of the smoothed classifier g (abstentions count as wrong): {accuracy:.3f}" in result.stdout
    assert df.filter(pl.col("prediction") != -1)["p_value"].max() <= ALPHA
    assert np.isfinite(df["p_value"].to_numpy()).all()
