"""--bound and --vote through the jobs: certify (fixed and sequential) and predict over real tar shards,
the rows they write (recomputed from the stored columns with the statistics), resume, refusals naming the
field, and the analysis (kept apart, labelled, re-bounded at another alpha)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import yaml

from rscert.analysis import analyze, markdown_table
from rscert.analysis.aggregate import load_rows
from rscert.analysis.result import AnalysisError
from rscert.cli import main
from rscert.stats.families import formula
from rscert.stats.pair import PairFormula, Tally, pair_bounds
from rscert.stats.sequential import look_schedule, pair_at_look

from .jobutil import certify_args, table
from .shardutil import write_shards
from .test_predict import predict_args

T = 0.1  # sharpens tests.zoo:tiny_cnn's scores so that some inputs certify


@pytest.fixture
def shards(tmp_path):
    write_shards(tmp_path / "data", shards=2, per_shard=6)
    return str(tmp_path / "data" / "data-{000000..000001}.tar")


def _pair(row: dict, alpha: float) -> tuple[float, float]:
    """The pair of bounds recomputed from a row's stored columns (hard top2, soft pa)."""
    if row["vote"] == "soft":
        tally = Tally(np.array([row["n"]]), np.array([[row["soft_sum"], 0.0]]), np.array([[row["soft_sumsq"], 0.0]]))
    else:
        tally = Tally(np.array([row["n"]]), np.array([[row["count_top"], row["count_second"] or 0]]))
    b = pair_bounds(tally, [0], alpha, row["bound"])
    return float(b.p_lower[0]), float(b.p_upper[0])


@pytest.mark.parametrize("bound,vote", [("top2", "hard"), ("pa", "soft"), ("top2", "soft")])
def test_certify_rows_carry_the_settings_and_their_bounds(tmp_path, shards, bound, vote):
    out = tmp_path / "out"
    extra = {"temperature": T} if vote == "soft" else {}
    assert main(certify_args(shards, out, bound=bound, vote=vote, n=2000, **extra)) == 0
    df = table(out)
    assert df.height == 12 and (df["status"] == "ok").all()
    assert (df["bound"] == bound).all() and (df["vote"] == vote).all()
    assert df["temperature"].to_list() == [T if vote == "soft" else None] * 12
    if vote == "soft":
        assert df["count_top"].null_count() == 12 and df["soft_sum"].null_count() == 0
        assert ((df["soft_sumsq"] <= df["soft_sum"]) & (df["soft_sum"] <= df["n"])).all()
    else:
        assert df["count_second"].null_count() == 0 and (df["count_top"] + df["count_second"] <= df["n"]).all()
    assert (df["p_upper"].null_count() == 0) == (bound == "top2")
    form = PairFormula(formula("gaussian", 0.5), bound)
    for row in df.iter_rows(named=True):
        if not (vote == "soft" and bound == "top2"):  # soft top2's pB bound needs every class's sums
            lo, hi = _pair(row, 0.001)
            assert row["p_lower"] == pytest.approx(lo, rel=1e-12)
            if bound == "top2":
                assert row["p_upper"] == pytest.approx(hi, rel=1e-12)
        hi = row["p_upper"] if bound == "top2" else 1 - row["p_lower"]
        assert row["radius"] == pytest.approx(float(form(row["p_lower"], hi)), rel=1e-12)
        assert (row["prediction"] == -1) == (not form.certified(row["p_lower"], hi))
    assert (df["prediction"] != -1).sum() > 0
    # resume: nothing to do, same rows; another bound on the same output is another configuration
    assert main(certify_args(shards, out, bound=bound, vote=vote, n=2000, **extra)) == 0
    assert table(out).equals(df)
    other = "pa" if bound == "top2" else "top2"
    assert main(certify_args(shards, out, bound=other, vote=vote, n=2000, **extra)) != 0


@pytest.mark.parametrize("bound,vote", [("top2", "hard"), ("pa", "soft"), ("top2", "soft")])
def test_sequential_rows_hold_the_pair_of_their_stopping_look(tmp_path, shards, bound, vote):
    out = tmp_path / "out"
    extra = {"temperature": T} if vote == "soft" else {}
    assert main(certify_args(shards, out, bound=bound, vote=vote, n=5000, sampling="sequential",
                             radii="0 0.1 0.2", **extra)) == 0
    df = table(out)
    assert (df["sampling"] == "sequential").all() and set(df["stop_reason"]) <= {"settled", "abstain", "cap"}
    schedule = look_schedule(5000, 0.001)
    for row in df.iter_rows(named=True):
        look = schedule.looks.index(row["n"])
        if not (vote == "soft" and bound == "top2"):
            lo, hi = _pair(row, schedule.alphas[look])
            assert row["p_lower"] == pytest.approx(lo, rel=1e-12)
            if bound == "top2":
                assert row["p_upper"] == pytest.approx(hi, rel=1e-12)
    assert df["n"].min() < 5000  # some inputs stopped early


def test_pair_at_look_is_the_pair_at_alpha_k():
    s = look_schedule(5000, 0.01)
    t = Tally(np.array([800]), np.array([[600, 150, 50]]))
    for bound in ("pa", "top2"):
        a, b = pair_at_look(t, [0], 4, s, bound), pair_bounds(t, [0], s.alphas[4], bound)
        assert a.p_lower[0] == b.p_lower[0] and a.p_upper[0] == b.p_upper[0]


def test_soft_predict_rows(tmp_path, shards):
    out = tmp_path / "out"
    assert main(predict_args(shards, out, vote="soft", temperature=T, n=300)) == 0
    df = table(out)
    assert (df["vote"] == "soft").all() and (df["bound"] == "pa").all() and (df["temperature"] == T).all()
    assert df["count_top"].null_count() == 12 and df["p_value"].null_count() == 0
    assert ((df["prediction"] == -1) == (df["p_value"] > 0.001)).all()
    assert ((df["prediction"] != -1) == (df["p_lower"] > df["p_upper"])).all()
    assert (df["prediction"] != -1).sum() > 0


@pytest.mark.parametrize("args,field", [
    ({"vote": "soft", "temperature": 0}, "temperature"),
    ({"temperature": 2.0}, "temperature"),
    ({"bound": "top3"}, "bound"),
    ({"vote": "average"}, "vote"),
    ({"vote": "soft", "sampling": "sequential", "n": 1000, "radii": "0 1.5"}, "radii"),
])
def test_bad_settings_are_refused_naming_the_field(tmp_path, shards, capsys, args, field):
    out = tmp_path / "out"
    assert main(certify_args(shards, out, **args)) != 0
    assert f"{field}" in capsys.readouterr().err
    assert not (out / "units").exists()


def test_predict_refuses_a_bound(tmp_path, shards, capsys):
    assert main(predict_args(shards, tmp_path / "a", bound="top2")) != 0
    assert "bound" in capsys.readouterr().err
    assert not (tmp_path / "a" / "units").exists()
    cfg = tmp_path / "predict.yaml"
    cfg.write_text(yaml.safe_dump({"bound": "top2"}))
    assert main([*predict_args(shards, tmp_path / "b"), "--config", str(cfg)]) != 0
    assert "bound" in capsys.readouterr().err


def test_analysis_keeps_them_apart_labels_and_re_bounds(tmp_path, shards):
    outs = {}
    for name, args in {"pa": {}, "top2": {"bound": "top2"}, "soft": {"vote": "soft", "temperature": T},
                       "softtop2": {"vote": "soft", "temperature": T, "bound": "top2"}}.items():
        outs[name] = tmp_path / name
        assert main(certify_args(shards, outs[name], n=2000, **args)) == 0
    result = analyze([str(p) for p in outs.values()], radii=[0.0, 0.1])
    s = result.summary.sort("run_id")
    assert s.height == 4 and set(zip(s["bound"], s["vote"], strict=True)) == {
        ("pa", "hard"), ("top2", "hard"), ("pa", "soft"), ("top2", "soft")}
    text = markdown_table(result)
    assert "top-2 bound" in text and f"soft votes (T = {T:g})" in text
    # re-bounding: hard top2 and soft pa from their stored columns, like the job at that alpha
    again = analyze([str(outs["top2"]), str(outs["soft"])], radii=[0.0, 0.1], alpha=0.2)
    assert again.summary.height == 2
    stored = pl.concat([table(outs["top2"]), table(outs["soft"])], how="diagonal_relaxed")
    rebounded = load_rows([str(outs["top2"]), str(outs["soft"])], alpha=0.2).collect()
    rebounded = rebounded.sort("bound", "vote", "index")
    stored = stored.sort("bound", "vote", "index")
    changed = 0
    for old, new in zip(stored.iter_rows(named=True), rebounded.iter_rows(named=True), strict=True):
        lo, hi = _pair(old, 0.2)
        form = PairFormula(formula("gaussian", 0.5), old["bound"])
        assert new["p_lower"] == pytest.approx(lo, rel=1e-12) and new["alpha"] == 0.2
        assert new["radius"] == pytest.approx(float(form(lo, hi)), rel=1e-12)
        assert new["prediction"] == (old["top_class"] if form.certified(lo, hi) else -1)
        changed += new["radius"] > old["radius"]
    assert changed > 0
    with pytest.raises(AnalysisError, match="soft --bound top2"):
        analyze([str(outs["softtop2"])], radii=[0.0], alpha=0.2)


@pytest.mark.parametrize("noise,norm,bound,vote", [("laplace", "l1", "top2", "hard"), ("uniform", "linf", "pa", "soft"),
                                                   ("laplace", "l1", "top2", "soft")])
def test_other_families_take_every_bound_and_vote(tmp_path, shards, noise, norm, bound, vote):
    """Rows of a non-Gaussian family carry its radius of the pair (in the asked norm, with the input's
    dimension), resume, and re-bound (where the row keeps what that needs) with the family's formula."""
    out = tmp_path / "out"
    extra = {"temperature": T} if vote == "soft" else {}
    args = certify_args(shards, out, noise=noise, norm=norm, bound=bound, vote=vote, n=2000, **extra)
    assert main(args) == 0
    df = table(out)
    assert set(zip(df["noise"], df["norm"], df["bound"], df["vote"], strict=True)) == {(noise, norm, bound, vote)}
    for row in df.iter_rows(named=True):
        form = PairFormula(formula(noise, 0.5, norm, row["dim"]), bound)
        hi = row["p_upper"] if bound == "top2" else 1 - row["p_lower"]
        assert row["radius"] == pytest.approx(float(form(row["p_lower"], hi)), rel=1e-12)
        if not (vote == "soft" and bound == "top2"):
            assert row["p_lower"] == pytest.approx(_pair(row, 0.001)[0], rel=1e-12)
    assert (df["prediction"] != -1).sum() > 0
    assert main(args) == 0 and table(out).equals(df)  # resume: nothing to do
    if vote == "soft" and bound == "top2":
        return
    again = load_rows([str(out)], alpha=0.2).collect().sort("index")
    for old, new in zip(df.iter_rows(named=True), again.iter_rows(named=True), strict=True):
        lo, hi = _pair(old, 0.2)
        form = PairFormula(formula(noise, 0.5, norm, old["dim"]), bound)
        assert new["radius"] == pytest.approx(float(form(lo, hi)), rel=1e-12)
