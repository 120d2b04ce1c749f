"""A seeded random subset of the selection (``--subset N --subset-seed S``, issue 22): the rule against a
reference SplitMix64, its statistics (inclusion probability N/M, every N-subset equally likely), the planner,
and real certify jobs on real tar shards (exact count, determinism, nestedness and resume, the record,
the analysis' denominators, errors)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from rscert.analysis.aggregate import analyze
from rscert.cli import main
from rscert.data.plan import Planner, Selection, plan_units
from rscert.data.subset import draw_subset, priorities, splitmix64, subset_state
from rscert.store.results import MANIFEST, Store
from rscert.store.selection_record import SELECTION_RECORD, from_ranges

from .jobutil import ROOT, certify_args, run, table
from .shardutil import write_shards

FAST = {"n0": 20, "n": 200}
COLS = ["key", "index", "label", "prediction", "top_class", "count_select", "count_top", "p_lower", "radius"]


# -- the rule ----------------------------------------------------------------------------------------

_M64 = (1 << 64) - 1


def _reference_splitmix64(state: int, count: int) -> list[int]:
    """Vigna's splitmix64.c with Python's unbounded integers: next() ``count`` times."""
    out = []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & _M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        out.append(z ^ (z >> 31))
    return out


def test_priorities_are_splitmix64_of_the_index_from_the_seeds_state():
    # the published outputs of splitmix64 seeded with 1234567
    assert splitmix64(1234567, np.arange(5)).tolist() == [6457827717110365317, 3203168211198807973,
                                                          9817491932198370423, 4593380528125082431,
                                                          16408922859458223821]
    state = subset_state(7)
    reference = _reference_splitmix64(state, 3000)
    indices = np.array([0, 1, 41, 2999, 1234], dtype=np.int64)
    assert priorities(7, indices).tolist() == [reference[i] for i in indices.tolist()]
    far = 2**40 + 3  # far indices: the state advanced by index + 1 increments, mod 2^64
    advanced = (state + far * 0x9E3779B97F4A7C15) & _M64
    assert priorities(7, np.array([far])).tolist() == _reference_splitmix64(advanced, 1)
    assert subset_state(7) != subset_state(8)


def test_the_n_smallest_priorities_are_kept_and_no_two_candidates_tie():
    candidates = np.arange(0, 300000, 3, dtype=np.int64)
    prio = priorities(5, candidates)
    assert len(np.unique(prio)) == len(candidates)  # distinct: an odd increment and a bijective mix
    by_priority = [c for _, c in sorted(zip(prio.tolist(), candidates.tolist(), strict=True))]
    assert draw_subset(candidates, 37, 5).tolist() == sorted(by_priority[:37])


def test_exact_count_determinism_and_independence_of_order():
    candidates = np.arange(10, 510, 2, dtype=np.int64)
    chosen = draw_subset(candidates, 40, 3)
    assert len(chosen) == 40 and len(set(chosen.tolist())) == 40
    assert np.all(np.diff(chosen) > 0) and set(chosen.tolist()) <= set(candidates.tolist())
    assert np.array_equal(draw_subset(candidates, 40, 3), chosen)
    shuffled = np.random.default_rng(0).permutation(candidates)
    assert np.array_equal(draw_subset(shuffled, 40, 3), chosen)


def test_a_larger_subset_with_the_same_seed_is_a_superset_and_other_seeds_differ():
    candidates = np.arange(1000, dtype=np.int64)
    previous: set[int] = set()
    for n in (1, 5, 50, 51, 200, 999):
        chosen = set(draw_subset(candidates, n, 12).tolist())
        assert previous <= chosen and len(chosen) == n
        previous = chosen
    draws = {tuple(draw_subset(candidates, 50, seed).tolist()) for seed in range(20)}
    assert len(draws) == 20
    assert len(set(draw_subset(candidates, 50, 0).tolist()) & set(draw_subset(candidates, 50, 1).tolist())) < 15


def test_more_than_the_candidates_keeps_them_all_and_bad_values_are_refused():
    candidates = np.array([3, 9, 4], dtype=np.int64)
    assert draw_subset(candidates, 3, 0).tolist() == [3, 4, 9]
    assert draw_subset(candidates, 100, 0).tolist() == [3, 4, 9]
    with pytest.raises(ValueError, match="subset: must be at least 1"):
        draw_subset(candidates, 0, 0)
    for seed in (-1, 2**64, 1.5, True):
        with pytest.raises(ValueError, match="subset_seed"):
            subset_state(seed)


def test_each_candidate_is_kept_with_probability_n_over_m():
    """Over 2,000 fixed seeds each candidate's inclusion count is Binomial(2000, N/M) (seeds are independent
    draws); every count must lie in its two-sided binomial interval at 1e-3 / M (Bonferroni), and the pair
    counts likewise at N(N-1) / (M(M-1)) (without replacement, no pair favoured)."""
    m, n, seeds = 40, 10, 2000
    candidates = np.arange(100, 100 + 7 * m, 7, dtype=np.int64)  # not 0..M-1: any indices
    hits = np.zeros((seeds, m), dtype=bool)
    for s in range(seeds):
        hits[s] = np.isin(candidates, draw_subset(candidates, n, 1000 + s))
    assert np.all(hits.sum(axis=1) == n)
    lo, hi = stats.binom.interval(1 - 1e-3 / m, seeds, n / m)
    counts = hits.sum(axis=0)
    assert np.all((lo <= counts) & (counts <= hi)), counts
    pairs = (hits[:, :, None] & hits[:, None, :]).sum(axis=0)[np.triu_indices(m, 1)]
    q = n * (n - 1) / (m * (m - 1))
    lo, hi = stats.binom.interval(1 - 1e-3 / len(pairs), seeds, q)
    assert np.all((lo <= pairs) & (pairs <= hi))


def test_every_n_subset_is_equally_likely():
    """M = 6, N = 2: the 15 possible subsets over 3,000 fixed seeds, chi-square against uniform."""
    candidates = np.arange(6, dtype=np.int64)
    subsets = {c: i for i, c in enumerate(itertools.combinations(range(6), 2))}
    observed = np.zeros(len(subsets))
    for seed in range(3000):
        observed[subsets[tuple(draw_subset(candidates, 2, seed).tolist())]] += 1
    assert stats.chisquare(observed).pvalue > 1e-3


# -- the planner -------------------------------------------------------------------------------------

KEYS = {f"d-{s}.tar": [f"s{s}_{i}" for i in range(10)] for s in range(3)}


def test_the_planner_cuts_nothing_before_every_shard_is_known_then_the_draw():
    selection = Selection(skip=2, start=3, end=27, subset=5, subset_seed=9)
    planner = Planner(list(KEYS), selection, 2)
    assert planner.add("d-2.tar", KEYS["d-2.tar"]) == [] and planner.add("d-0.tar", KEYS["d-0.tar"]) == []
    units = planner.add("d-1.tar", KEYS["d-1.tar"])
    plan = planner.close()
    candidates = np.arange(4, 27, 2)
    want = draw_subset(candidates, 5, 9)
    assert sorted(i for u in units for i in u.indices) == want.tolist() == plan.selected_indices.tolist()
    assert (plan.selected, plan.candidates, plan.done) == (5, len(candidates), 0)
    assert all(len(u.indices) <= 2 and u.keys == tuple(KEYS[u.shard][p] for p in u.positions) for u in units)
    for unit_size in (1, 3, 50):  # the same inputs whatever the unit size
        again = plan_units(list(KEYS), KEYS, selection, unit_size)
        assert sorted(i for u in again.units for i in u.indices) == want.tolist()
    committed = set(want[:3].tolist())
    resumed = plan_units(list(KEYS), KEYS, selection, 2, committed=committed)
    assert (resumed.selected, resumed.done) == (5, 3)
    assert sorted(i for u in resumed.units for i in u.indices) == want[3:].tolist()


def test_a_failed_shard_leaves_a_subset_unplanned():
    keys = {**KEYS, "d-1.tar": "not a tar file"}
    plan = plan_units(list(keys), keys, Selection(subset=4), 2)
    assert plan.units == [] and plan.selected == 0 and plan.candidates is None
    assert plan.failed_shards == {"d-1.tar": "not a tar file"} and plan.deferred_shards == ["d-0.tar", "d-2.tar"]


def test_without_a_subset_max_still_keeps_the_first_ones():
    plan = plan_units(list(KEYS), KEYS, Selection(skip=3, start=2, max=7), 4)
    assert plan.selected_indices.tolist() == [3, 6, 9, 12, 15, 18, 21] and plan.candidates is None


# -- real jobs ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("subset")
    write_shards(folder, shards=3, per_shard=10)
    return str(folder / "data-{000000..000002}.tar")


@pytest.fixture(scope="module")
def everything(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("all") / "out"
    assert main(certify_args(shards, out, **FAST)) == 0
    return table(out)


def _record(out) -> dict:
    return json.loads((out / SELECTION_RECORD).read_text())


def test_a_subset_run_certifies_exactly_the_drawn_inputs_and_records_them(tmp_path, shards, everything, capsys):
    out = tmp_path / "out"
    assert main(certify_args(shards, out, subset=6, **{"subset-seed": 11}, **FAST)) == 0
    err = capsys.readouterr().err
    want = draw_subset(np.arange(30), 6, 11).tolist()
    rows = table(out)
    assert rows["index"].to_list() == want
    assert rows.select(COLS).equals(everything.filter(everything["index"].is_in(want)).select(COLS))
    assert "subset: 6 of 30 candidate inputs (--skip/--start/--end), drawn with subset seed 11" in err
    record = _record(out)
    assert record["selection"] == {"skip": 1, "start": 0, "end": None, "max": None, "subset": 6, "subset_seed": 11}
    assert record["candidates"] == 30 and record["selected"] == 6 and from_ranges(record["indices"]).tolist() == want
    manifest = json.loads((out / MANIFEST).read_text())
    assert (manifest["config"]["subset"], manifest["config"]["subset_seed"]) == (6, 11)
    assert not {"subset", "subset_seed", "skip", "max"} & set(manifest["result_fields"])
    summary = analyze([str(out)], radii=[0.0]).summary.row(0, named=True)
    assert (summary["inputs"], summary["missing"]) == (6, 0)

    # widening: the same seed, twice as many; the first six are not run again
    assert main(certify_args(shards, out, subset=12, **{"subset-seed": 11}, **FAST)) == 0
    assert "12 inputs selected, 6 certified before" in capsys.readouterr().err
    wider = draw_subset(np.arange(30), 12, 11).tolist()
    assert set(want) < set(wider) and table(out)["index"].to_list() == wider
    assert sum(e["rows"] for e in Store(str(out)).executions()) == 12
    assert analyze([str(out)], radii=[0.0]).summary.row(0, named=True)["inputs"] == 12
    # and then everything into the same folder (selection fields are not in the fingerprint)
    assert main(certify_args(shards, out, **FAST)) == 0
    assert table(out).select(COLS).equals(everything.select(COLS))
    assert sum(e["rows"] for e in Store(str(out)).executions()) == 30
    assert "candidates" not in _record(out) and _record(out)["selection"]["subset"] is None


def test_the_same_subset_in_another_process_batch_and_unit_size(tmp_path, shards):
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(certify_args(shards, first, subset=5, **FAST)) == 0  # the default subset seed, 0
    assert _record(first)["selection"]["subset_seed"] == 0
    done = run(certify_args(shards, second, subset=5, **{"subset-seed": 0, "unit-size": 1, "batch-size": 7}, **FAST))
    assert done.returncode == 0, done.stderr
    assert table(first).select(COLS).equals(table(second).select(COLS))
    assert table(first)["index"].to_list() == draw_subset(np.arange(30), 5, 0).tolist()


def test_the_same_subset_on_ray(tmp_path, shards):
    """``--executor ray`` (an embedded local Ray; the configuration travels to the actors and is validated
    there again) certifies the same inputs with the same results as the in-process run."""
    local, ray = tmp_path / "local", tmp_path / "ray"
    settings = {"subset": 7, "subset-seed": 5, **FAST}
    assert main(certify_args(shards, local, **settings)) == 0
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
               OMP_NUM_THREADS="1")
    args = certify_args(shards, ray, executor="ray", **settings)
    result = subprocess.run([sys.executable, "-m", "rscert.cli", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "1 node(s)" in result.stderr and "subset: 7 of 30 candidate inputs" in result.stderr
    assert table(ray).select(COLS).equals(table(local).select(COLS))
    assert table(ray)["index"].to_list() == draw_subset(np.arange(30), 7, 5).tolist()
    assert _record(ray)["indices"] == _record(local)["indices"]


def test_a_subset_of_skip_start_end_and_more_than_there_are(tmp_path, shards, capsys):
    out = tmp_path / "out"
    assert main(certify_args(shards, out, skip=3, start=4, end=26, subset=4, **{"subset-seed": 2}, **FAST)) == 0
    candidates = [i for i in range(4, 26) if i % 3 == 0]
    assert table(out)["index"].to_list() == draw_subset(np.array(candidates), 4, 2).tolist()
    assert _record(out)["candidates"] == len(candidates)
    capsys.readouterr()
    small = tmp_path / "small"
    assert main(certify_args(shards, small, end=5, subset=50, **FAST)) == 0
    assert "warning: --subset 50 is more than the 5 candidate inputs: all 5 are kept" in capsys.readouterr().err
    assert table(small)["index"].to_list() == [0, 1, 2, 3, 4]
    assert analyze([str(small)], radii=[0.0]).summary.row(0, named=True)["inputs"] == 5


def test_a_shard_that_cannot_be_read_plans_no_subset(tmp_path, capsys):
    folder = tmp_path / "data"
    write_shards(folder, shards=3, per_shard=4)
    (folder / "data-000001.tar").write_bytes(b"this is not a tar file" * 40)
    out = tmp_path / "out"
    assert main(certify_args(str(folder / "data-{000000..000002}.tar"), out, subset=3, **FAST)) != 0
    assert "--subset draws from every candidate input" in capsys.readouterr().out
    record = _record(out)
    assert record["selected"] == 0 and len(record["unplanned_shards"]) == 3
    assert not list(out.glob("units/*.parquet"))


@pytest.mark.parametrize(("extra", "message"), [
    ({"subset": 0}, "subset: Input should be greater than or equal to 1"),
    ({"subset": -3}, "subset: Input should be greater than or equal to 1"),
    ({"subset": 3, "max": 2}, "subset: --subset 3 and --max 2 are both counts"),
    ({"subset-seed": 4}, "subset-seed: seeds the --subset draw; without --subset there is none"),
    ({"subset": 3, "subset-seed": -1}, "subset-seed: Input should be greater than or equal to 0"),
    ({"subset": 3, "subset-seed": 2**64}, "subset-seed: Input should be less than or equal to"),
])
def test_bad_subset_values_are_refused_before_anything_is_written(tmp_path, shards, capsys, extra, message):
    out = tmp_path / "out"
    assert main(certify_args(shards, out, **extra, **FAST)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_another_subset_seed_into_the_same_folder_is_said(tmp_path, shards, capsys):
    out = tmp_path / "out"
    assert main(certify_args(shards, out, subset=3, **{"subset-seed": 1}, **FAST)) == 0
    assert main(certify_args(shards, out, subset=5, **{"subset-seed": 1}, **FAST)) == 0  # widening: nothing said
    assert "draws another" not in capsys.readouterr().err
    assert main(certify_args(shards, out, subset=5, **{"subset-seed": 2}, **FAST)) == 0
    said = capsys.readouterr().err
    assert "last submission drew its subset with --subset-seed 1; --subset-seed 2 draws another" in said
