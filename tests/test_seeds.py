"""Seeds are never chosen after seeing results (issue 18, section 5): a fresh noise seed per new output
folder when none is given, recorded so that resumes reproduce, and an envelope that never takes the
best of several seeds. Real jobs, real manifests, real Parquet."""

from __future__ import annotations

import json

import polars as pl
import pytest

from rscert.analysis import analyze
from rscert.cli import main
from rscert.store.results import MANIFEST

from .jobutil import certify_args, table
from .shardutil import write_shards
from .test_analysis_runs import certify_rows, write_run

FAST = {"n0": 20, "n": 100}


def _seed(out) -> int:
    return json.loads((out / MANIFEST).read_text())["config"]["seed"]


def test_each_new_folder_draws_its_seed_and_a_resume_keeps_it(tmp_path, capsys):
    write_shards(tmp_path / "data", shards=1, per_shard=6)
    spec = str(tmp_path / "data" / "data-000000.tar")
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(certify_args(spec, a, seed=None, max=3, **FAST)) == 0
    assert main(certify_args(spec, b, seed=None, max=3, **FAST)) == 0
    seed_a, seed_b = _seed(a), _seed(b)
    assert isinstance(seed_a, int) and seed_a != seed_b
    assert set(table(a)["seed"]) == {seed_a}
    assert f"seed {seed_a}" in capsys.readouterr().err  # said when drawn
    assert main(certify_args(spec, a, seed=None, **FAST)) == 0  # resumes with the recorded seed
    assert _seed(a) == seed_a and set(table(a)["seed"]) == {seed_a}
    again = tmp_path / "again"  # the same seed given explicitly reproduces the folder's rows
    assert main(certify_args(spec, again, seed=seed_a, **FAST)) == 0
    cols = ["index", "count_select", "count_top", "radius"]
    assert table(again).select(cols).equals(table(a).select(cols))
    assert main(certify_args(spec, a, seed=seed_a + 1, **FAST)) == 2  # another seed is another run
    assert "seed" in capsys.readouterr().err


def test_the_envelope_never_picks_among_seeds(tmp_path):
    low = write_run(tmp_path / "a", certify_rows(10, "run-a", seed=0))
    high = write_run(tmp_path / "b", [{**r, "radius": r["radius"] + 0.3}
                                      for r in certify_rows(10, "run-b", seed=1)])
    env = analyze([str(low), str(high)], radii=[0.0]).envelope
    at = env.filter(pl.col("radius").round(6) == 0.45).row(0, named=True)
    # run-a: radii 0..0.4, none >= 0.45; run-b: 0.3..0.7, 6 of 10 >= 0.45: pooled 6 of 20, not run-b's 0.6
    assert at["certified_accuracy"] == pytest.approx(6 / 20)
    assert at["best_run_id"] == "run-a,run-b"
    # another sigma is another configuration: the envelope still takes the best over those
    other = write_run(tmp_path / "c", [{**r, "radius": r["radius"] + 1.0}
                                       for r in certify_rows(10, "run-c", sigma=1.0)])
    env = analyze([str(low), str(high), str(other)], radii=[0.0]).envelope
    at = env.filter(pl.col("radius").round(6) == 0.45).row(0, named=True)
    assert at["certified_accuracy"] == 1.0 and at["best_run_id"] == "run-c" and at["best_sigma"] == 1.0
