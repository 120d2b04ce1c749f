"""The shard list is part of the selection: one output folder may run one shard first and all of them next, or
the same files spelled another way; what each dataset index means is checked by content (rscert.data.layout)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from rscert.cli import main
from rscert.data.layout import LAYOUT, Layout, Placement
from rscert.data.plan import Selection, plan_units
from rscert.store.results import MANIFEST, Store

from .jobutil import certify_args, table
from .shardutil import write_shards

COLS = ["key", "index", "label", "prediction", "top_class", "count_select", "count_top", "p_lower", "radius"]
FAST = {"n0": 20, "n": 200}


def args_for(paths, out, **overrides) -> list[str]:
    """certify arguments over several --data values (in the order given)."""
    args = certify_args(str(paths[0]), out, **FAST, **overrides)
    at = args.index("--data") + 2
    args[at:at] = [str(p) for p in paths[1:]]
    return args


def executed_rows(out) -> int:
    return sum(e["rows"] for e in Store(str(out)).executions())


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("list")
    return write_shards(folder, shards=3, per_shard=10)


@pytest.fixture(scope="module")
def one_shot(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("oneshot") / "out"
    assert main(args_for(shards, out)) == 0
    return table(out)


def test_one_shard_then_all_of_them(tmp_path, shards, one_shot, capsys):
    out = tmp_path / "out"
    assert main(args_for(shards[:1], out)) == 0
    assert table(out)["index"].to_list() == list(range(10))
    capsys.readouterr()
    assert main(args_for(shards, out)) == 0
    assert "30 inputs selected, 10 certified before" in capsys.readouterr().err
    got = table(out)
    assert got["index"].to_list() == list(range(30)), "an input was certified twice or not at all"
    assert got.select(COLS).equals(one_shot.select(COLS))
    assert executed_rows(out) == 30  # 10, then 20: the first shard's inputs were not certified again
    layout = json.loads((out / LAYOUT).read_text())["shards"]
    assert [(p["offset"], p["count"]) for p in layout] == [(0, 10), (10, 10), (20, 10)]


def test_relative_then_absolute_then_a_copy_elsewhere(tmp_path, shards, one_shot, monkeypatch, capsys):
    out = tmp_path / "out"
    monkeypatch.chdir(shards[0].parent)
    assert main(args_for([p.name for p in shards], out)) == 0  # relative paths
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(args_for(shards, out)) == 0  # the same files, absolute
    assert "0 to run (0 inputs)" in capsys.readouterr().err
    copy = tmp_path / "mirror"
    shutil.copytree(shards[0].parent, copy)
    assert main(args_for(sorted(copy.glob("*.tar")), out)) == 0  # the same bytes at another place
    assert "0 to run (0 inputs)" in capsys.readouterr().err
    assert executed_rows(out) == 30
    assert table(out).select(COLS).equals(one_shot.select(COLS))


def test_a_reordered_list_is_refused_by_name_and_changes_nothing(tmp_path, shards, capsys):
    out = tmp_path / "out"
    assert main(args_for([shards[1]], out)) == 0  # shard 1's content now holds indices 0..9
    before = table(out)
    capsys.readouterr()
    assert main(args_for(shards, out)) != 0
    err = "".join(capsys.readouterr())
    assert f"shard {shards[0]}" in err and "not where this folder's run had it" in err
    assert "indices 0..9" in err and shards[1].name in err  # whose indices they are
    assert "2 later shard(s) not planned" in err  # shards 1 and 2 follow the refused one
    assert table(out).equals(before) and executed_rows(out) == 10


def test_a_shard_dropped_from_the_middle_is_caught_at_the_next_one(tmp_path, shards, one_shot, capsys):
    out = tmp_path / "out"
    assert main(args_for(shards, out)) == 0
    capsys.readouterr()
    assert main(args_for([shards[0], shards[2]], out)) != 0
    err = "".join(capsys.readouterr())
    assert f"shard {shards[2]}" in err and "would hold dataset indices 10..19" in err
    assert f"other content ({shards[1]}, indices 10..19); its content held indices 20..29" in err
    assert table(out).select(COLS).equals(one_shot.select(COLS)) and executed_rows(out) == 30


def test_other_content_under_a_new_spelling_is_refused(tmp_path, shards, capsys):
    out = tmp_path / "out"
    assert main(args_for(shards[:2], out)) == 0
    other = tmp_path / "other"
    shutil.copytree(shards[0].parent, other)
    write_shards(tmp_path / "regen", shards=2, per_shard=10, seed=7)  # same names and keys, other images
    shutil.copy(tmp_path / "regen" / shards[1].name, other / shards[1].name)
    capsys.readouterr()
    assert main(args_for(sorted(other.glob("*.tar")), out)) != 0
    err = "".join(capsys.readouterr())
    assert "repair or replace" not in err
    assert f"shard {other / shards[1].name}" in err and "other content" in err
    assert executed_rows(out) == 20  # shard 0 (same bytes) had nothing left; nothing ran on the regenerated one


def test_a_folder_from_before_the_layout_record_keeps_its_own_list(tmp_path, shards, capsys):
    """A folder whose manifest fingerprinted its shard list (rscert before the shard list left the fingerprint):
    the same list resumes under the folder's own fingerprint; another list is refused, naming what to give."""
    fresh = tmp_path / "fresh"
    assert main(args_for(shards[:2], fresh, max=1)) == 0
    manifest = json.loads((fresh / MANIFEST).read_text())
    old = tmp_path / "old"
    old.mkdir()
    manifest["result_fields"]["shards"] = [str(p) for p in shards[:2]]
    manifest["fingerprint"] = "0123456789abcdef"
    (old / MANIFEST).write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(args_for(shards[::-1], old)) == 2
    assert "no layout record" in capsys.readouterr().err and not list(old.glob("units/*.parquet"))
    assert main(args_for(shards, old)) == 0  # its list first, as spelled, then a new shard
    assert table(old).height == 30
    prints = {pq.read_schema(f).metadata[b"rscert.fingerprint"] for f in old.glob("units/*.parquet")}
    assert prints == {b"0123456789abcdef"}  # the folder's own fingerprint, which its earlier rows carry
    assert (old / LAYOUT).exists()


def test_layout_rules():
    layout = Layout([Placement(0, 10, "a", "x/a.tar"), Placement(10, 5, "b", "x/b.tar")])
    assert layout.place(Placement(0, 10, "a", "y/a.tar")) is None and not layout.dirty  # respelled: consistent
    assert layout.place(Placement(15, 10, "c", "c.tar")) is None and layout.dirty  # appended: recorded
    assert "other content (x/b.tar" in layout.place(Placement(10, 5, "d", "d.tar"))  # replaced content
    assert "other content" in layout.place(Placement(12, 10, "e", "e.tar"))  # overlapping another's indices
    moved = layout.place(Placement(5, 10, "a", "a.tar"))  # content moved onto indices it partly held
    assert "would hold dataset indices 5..14" in moved and "its content held indices 0..9 (as x/a.tar)" in moved
    assert layout.place(Placement(25, 10, "a", "again.tar")) is None  # repeated at new indices: allowed, as listed
    assert layout.place(Placement(25, 0, "empty", "e.tar")) is None  # an empty shard holds no index
    again = Layout.from_json(layout.to_json())
    assert again.placements == sorted(layout.placements, key=lambda p: p.offset)


def test_shards_after_a_failed_one_are_all_deferred():
    plan = plan_units(["a", "b", "c", "d"], {"a": ["k1"], "b": "unreadable", "c": ["k2"], "d": ["k3"]}, Selection(), 1)
    assert plan.failed_shards == {"b": "unreadable"} and plan.deferred_shards == ["c", "d"]
    assert [u.shard for u in plan.units] == ["a"]


def test_manifest_data_and_fingerprint_do_not_depend_on_the_spelling(tmp_path, shards, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(args_for(shards[:1], a, max=1)) == 0
    monkeypatch.chdir(shards[0].parent)
    assert main(args_for([os.path.relpath(p) for p in shards], b, max=1)) == 0
    fa, fb = (json.loads((o / MANIFEST).read_text()) for o in (a, b))
    assert fa["fingerprint"] == fb["fingerprint"] and "shards" not in fa["result_fields"]


def test_units_come_after_their_placement_is_recorded_and_the_record_is_written_rarely(tmp_path, monkeypatch):
    """The layout record is rewritten whole, so the planning pass writes it at most every LAYOUT_SECONDS while
    the executor has units (not once per shard: quadratic bytes at thousands of shards); yet no unit is handed
    out before the record on disk places its shard at its indices."""
    from rscert.run.plan_feed import PlanFeed

    paths = [str(p) for p in write_shards(tmp_path / "data", shards=40, per_shard=2, size=8)]
    store = Store(str(tmp_path / "out"))
    store.create_folders()
    writes = []
    real = Store.write_json

    def counting(self, name, payload):
        writes.append(name)
        return real(self, name, payload)

    monkeypatch.setattr(Store, "write_json", counting)
    monkeypatch.setattr("rscert.run.plan_feed.LAYOUT_SECONDS", 600.0)  # however loaded the machine
    feed = PlanFeed(store, paths, Selection(), 1, np.zeros(0, dtype=np.int64), lambda line: None, None,
                    lambda plan: None)
    got = []
    while not feed.exhausted:
        units = feed.take(timeout=0.05, hungry=not got)  # hungry only for the first: a queue holds the rest
        recorded = {(p["url"], p["offset"] + i) for p in json.loads((tmp_path / "out" / LAYOUT).read_text())["shards"]
                    for i in range(p["count"])} if units else set()
        assert all((u.shard, i) in recorded for u in units for i in u.indices), "a unit came before its placement"
        got += units
    feed.wait()
    assert sorted(i for u in got for i in u.indices) == list(range(80))
    assert writes.count(LAYOUT) in (1, 2), writes.count(LAYOUT)  # the first units' at once, then at the end


def test_layout_placement_against_a_brute_force_oracle():
    """Bisection over the recorded spans finds exactly the clashes that a scan of every placement finds."""
    rng = np.random.default_rng(5)
    for _ in range(200):
        layout, plain = Layout(), []
        for _ in range(12):
            p = Placement(int(rng.integers(0, 60)), int(rng.integers(0, 8)), str(rng.integers(0, 4)), "u")
            exact = any((k.offset, k.count, k.sha256) == (p.offset, p.count, p.sha256) for k in plain)
            clash = any(k.overlaps(p) for k in plain)
            expected = exact or not clash
            assert (layout.place(p) is None) == expected
            if expected and not exact:
                plain.append(p)
