"""Selections and unit sizes may change between runs into one output: each input is certified once."""

from __future__ import annotations

import pytest

from rscert.cli import main
from rscert.data.plan import Selection, plan_units
from rscert.store.results import Store

from .jobutil import certify_args, table
from .shardutil import write_shards

COLS = ["key", "index", "label", "prediction", "top_class", "count_select", "count_top", "p_lower", "radius"]
FAST = {"n0": 20, "n": 200}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sel")
    write_shards(folder, shards=3, per_shard=10)
    return str(folder / "data-{000000..000002}.tar")


@pytest.fixture(scope="module")
def one_shot(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("oneshot") / "out"
    assert main(certify_args(shards, out, **FAST)) == 0
    return table(out)


def _once_and_equal(out, reference) -> None:
    got = table(out)
    assert got["index"].to_list() == sorted(set(got["index"].to_list())), "an input was certified twice"
    assert got.select(COLS).equals(reference.select(COLS))


def test_growing_max_certifies_only_the_rest(tmp_path, shards, one_shot, capsys):
    out = tmp_path / "out"
    assert main(certify_args(shards, out, max=3, **FAST)) == 0
    assert table(out)["index"].to_list() == [0, 1, 2]
    capsys.readouterr()
    assert main(certify_args(shards, out, **FAST)) == 0
    err = capsys.readouterr().err
    assert "30 inputs selected, 3 certified before" in err and "(27 inputs)" in err
    _once_and_equal(out, one_shot)
    assert sum(e["rows"] for e in Store(str(out)).executions()) == 30  # 3 rows, then 27: no input twice


def test_changing_unit_size_and_range_midway(tmp_path, shards, one_shot):
    out = tmp_path / "out"
    assert main(certify_args(shards, out, start=5, end=17, **{"unit-size": 5}, **FAST)) == 0
    assert main(certify_args(shards, out, skip=2, **{"unit-size": 3}, **FAST)) == 0
    assert main(certify_args(shards, out, **{"unit-size": 7}, **FAST)) == 0
    _once_and_equal(out, one_shot)
    assert sum(e["rows"] for e in Store(str(out)).executions()) == 30


def test_shrinking_the_selection_runs_nothing(tmp_path, shards, one_shot, capsys):
    out = tmp_path / "out"
    assert main(certify_args(shards, out, **FAST)) == 0
    before = len(Store(str(out)).executions())
    capsys.readouterr()
    assert main(certify_args(shards, out, max=5, skip=2, **{"unit-size": 2}, **FAST)) == 0
    assert "0 to run (0 inputs)" in capsys.readouterr().err
    assert len(Store(str(out)).executions()) == before
    _once_and_equal(out, one_shot)


def test_result_settings_are_still_refused_with_the_differences(tmp_path, shards, capsys):
    out = tmp_path / "out"
    assert main(certify_args(shards, out, max=2, **FAST)) == 0
    capsys.readouterr()
    assert main(certify_args(shards, out, max=4, seed=9, n0=20, n=300)) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "n: 200 in the folder, 300 now" in err and "seed: 3" in err
    assert table(out).height == 2


def test_unit_ids_are_stable_for_the_same_pending_inputs_and_unique():
    keys = {"a-0.tar": [f"k{i}" for i in range(10)], "b-0.tar": [f"m{i}" for i in range(10)]}
    shards = list(keys)
    first = plan_units(shards, keys, Selection(), 4, committed={4, 5, 6, 7, 12})
    again = plan_units(shards, keys, Selection(), 4, committed={12, 7, 6, 5, 4})
    assert [u.unit_id for u in first.units] == [u.unit_id for u in again.units]
    assert [u.indices for u in first.units] == [(0, 1, 2, 3), (8, 9), (10, 11, 13, 14), (15, 16, 17, 18), (19,)]
    assert (first.selected, first.done) == (20, 5)
    other = plan_units(shards, keys, Selection(), 3, committed={4, 5, 6, 7, 12})
    ids = [u.unit_id for u in first.units] + [u.unit_id for u in other.units]
    cuts = [u.indices for u in first.units] + [u.indices for u in other.units]
    assert len(set(ids)) == len(set(cuts))  # one id per distinct cut, whatever the unit size
