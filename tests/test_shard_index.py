"""Shard indexes: byte spans read by ranged reads give the rows a walk gives, a changed shard is refused,
pipe: shards are streamed once for all their units, and the driver's queue keeps a stream on one actor."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import numpy as np
import pytest
import torch

from rscert.cli import main
from rscert.data.decode import read_unit
from rscert.data.indexing import index_all
from rscert.data.plan import Selection, plan_units
from rscert.data.shard_identity import verify
from rscert.data.shard_index import KIND, SIDECAR_SUFFIX, ShardIndex, scan
from rscert.data.shards import ShardError, StreamCursor, sequential
from rscert.run.unit_queue import UnitQueue
from rscert.store.results import INDEX_DIR, Store

from .jobutil import certify_args, table
from .shardutil import write_shards

ROW_COLS = ["key", "index", "label", "prediction", "top_class", "count_select", "count_top", "p_lower", "radius",
            "status", "unit_id"]


def _tensors(units, cursor=None):
    out = {}
    for unit in units:
        for item in read_unit(unit, "none", cursor=cursor):
            out[item.index] = (item.key, item.label, item.tensor)
    return out


def test_sidecar_format_points_at_each_samples_tar_header(tmp_path):
    (path,) = write_shards(tmp_path / "data", shards=1, per_shard=7)
    assert main(["index", str(path)]) == 0
    sidecar = json.loads((tmp_path / "data" / (path.name + SIDECAR_SUFFIX)).read_text())
    assert sidecar["__kind__"] == KIND and sidecar["url"] == str(path) and sidecar["nsamples"] == 7
    assert sidecar["filesize"] == sidecar["identity"]["size"] == path.stat().st_size
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    for key, offset, size in sidecar["samples"]:
        with tarfile.open(fileobj=io.BytesIO(data[offset : offset + size]), mode="r|") as span:
            names = [m.name for m in span]  # the span starts at the sample's first header (a PAX one here)
        assert names and {n.split(".")[0] for n in names} == {key}
        last = max((m for m in members if m.name.split(".")[0] == key), key=lambda m: m.offset)
        assert offset + size == -(-(last.offset_data + last.size) // 512) * 512  # ends at its last data block


@pytest.mark.parametrize("skip", [1, 3])
def test_ranged_reads_give_the_bytes_a_walk_gives(tmp_path, skip):
    shards = [str(p) for p in write_shards(tmp_path / "data", shards=2, per_shard=9)]
    indexes = {u: scan(u) for u in shards}
    plan = plan_units(shards, indexes, Selection(skip=skip), unit_size=4)
    assert all(u.reads is not None for u in plan.units)
    walked = plan_units(shards, {u: i.keys for u, i in indexes.items()}, Selection(skip=skip), unit_size=4)
    assert all(u.reads is None for u in walked.units)
    assert [u.unit_id for u in plan.units] == [u.unit_id for u in walked.units]  # the reads do not enter the ids
    a, b = _tensors(plan.units), _tensors(walked.units)
    assert a.keys() == b.keys() and len(a) == len(range(0, 18, skip))
    for index in a:
        assert a[index][:2] == b[index][:2] and torch.equal(a[index][2], b[index][2])
    if skip == 3:  # samples 3 apart are within GAP_BYTES: one read per unit, the samples between unused
        assert all(len(u.reads) == 1 for u in plan.units)


def test_certify_rows_identical_from_ranged_reads_walks_and_one_pipe_stream(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    write_shards(tmp_path / "data", shards=2, per_shard=10)
    spec = f"{tmp_path}/data/data-{{000000..000001}}.tar"
    assert main(["index", spec]) == 0
    assert main(certify_args(spec, tmp_path / "ranged", n=200)) == 0
    log = tmp_path / "opened.log"
    pipe = f"pipe:sh -c 'echo x >> {log}; cat {tmp_path}/data/data-{{000000..000001}}.tar'"
    assert main(certify_args(pipe, tmp_path / "pipe", n=200)) == 0
    # the pipe command ran once to index each shard, then once for all of the shard's 3 units
    assert log.read_text().count("x") == 2 * 2 + 1  # and once for the probe (the first samples of shard 0)
    for folder in ["ranged", "pipe"]:
        index = json.loads(next((tmp_path / folder / INDEX_DIR).glob("*.json")).read_text())
        assert index["__kind__"] == KIND and index["nsamples"] == 10
    ranged, piped = table(tmp_path / "ranged"), table(tmp_path / "pipe")
    assert ranged.height == piped.height == 20
    cols = [c for c in ROW_COLS if c != "unit_id"]
    assert ranged.select(cols).equals(piped.select(cols))
    # and today's walk (an index without offsets, as folders written before indexes hold)
    shutil.rmtree(tmp_path / "data-copy", ignore_errors=True)
    legacy = tmp_path / "legacy"
    (legacy / "units").mkdir(parents=True)
    keys = {f"{tmp_path}/data/data-{s:06d}.tar": [f"s{s:02d}_{i:04d}" for i in range(10)] for s in range(2)}
    (legacy / "_rscert_shards.json").write_text(json.dumps(keys))
    assert main(certify_args(spec, legacy, n=200)) == 0
    assert table(legacy).select(ROW_COLS).equals(ranged.select(ROW_COLS))


def test_a_changed_shard_is_refused_a_touched_one_is_not(tmp_path, capsys):
    paths = write_shards(tmp_path / "data", shards=2, per_shard=6)
    spec = f"{tmp_path}/data/data-{{000000..000001}}.tar"
    out = tmp_path / "out"
    assert main(certify_args(spec, out, n=100, max=4)) == 0  # indexes both shards, certifies 4 inputs
    # the same bytes written again (a restored backup): a new mtime, the same samples -> planned as before
    paths[1].write_bytes(paths[1].read_bytes())
    assert main(certify_args(spec, out, n=100, max=8)) == 0
    # new content with the same keys (other images): another size -> refused, nothing of it runs
    write_shards(tmp_path / "other", shards=2, per_shard=6, size=24, seed=5)
    shutil.copy(tmp_path / "other" / "data-000001.tar", paths[1])
    capsys.readouterr()
    assert main(certify_args(spec, out, n=100)) == 1
    captured = capsys.readouterr()
    assert "data-000001.tar" in captured.out and "its size changed" in captured.err
    got = table(out)
    assert got.height == 8 and got["key"].str.starts_with("s01").sum() == 2  # only those certified before
    # the index records what identifies the content (the identity record of rscert.data.shard_identity)
    index = scan(str(paths[1]))
    assert {"size", "mtime_ns", "sha256"} <= set(index.identity)
    assert verify(str(paths[1]), {**index.identity, "size": index.identity["size"] + 1})[0] is not None


def test_reading_spans_of_a_changed_shard_fails_the_unit(tmp_path):
    (path,) = write_shards(tmp_path / "data", shards=1, per_shard=6)
    index = scan(str(path))
    plan = plan_units([str(path)], {str(path): index}, Selection(), unit_size=3)
    write_shards(tmp_path / "other", shards=1, per_shard=6, size=24, seed=5)
    shutil.copy(tmp_path / "other" / "data-000000.tar", path)
    with pytest.raises(ShardError, match="not the indexed samples|changed since|the plan says"):
        list(read_unit(plan.units[1], "none"))


def test_planning_saves_each_shards_index_and_keeps_them_past_a_failed_shard(tmp_path):
    shards = [str(p) for p in write_shards(tmp_path / "data", shards=3, per_shard=4)]
    missing = str(tmp_path / "data" / "gone.tar")
    store = Store(str(tmp_path / "out"))
    result = index_all(store, [*shards, missing], print)
    assert isinstance(result[missing], str) and "no such file" in result[missing]
    saved = sorted((tmp_path / "out" / INDEX_DIR).glob("*.json"))
    assert len(saved) == 3
    again = index_all(store, shards, print)
    assert all(isinstance(again[u], ShardIndex) and again[u].keys == result[u].keys for u in shards)


def test_stream_cursor_reads_a_pipe_shard_once_for_units_in_order(tmp_path):
    (path,) = write_shards(tmp_path / "data", shards=1, per_shard=10)
    url = f"pipe:cat {path}"
    assert sequential(url) and not sequential(str(path))
    index = scan(url)
    plan = plan_units([url], {url: index}, Selection(), unit_size=3)
    assert all(u.reads is None for u in plan.units)
    cursor = StreamCursor()
    got = _tensors(plan.units, cursor)
    assert cursor.opened == 1 and len(got) == 10
    expected = _tensors(plan_units([str(path)], {str(path): scan(str(path))}, Selection(), unit_size=3).units)
    assert all(torch.equal(got[i][2], expected[i][2]) for i in range(10))
    _tensors(plan.units[:1], cursor)  # an earlier position: a new stream
    assert cursor.opened == 2


def test_unit_queue_gives_a_streams_units_to_one_actor_in_order(tmp_path):
    paths = [str(p) for p in write_shards(tmp_path / "data", shards=2, per_shard=6)]
    urls = [f"pipe:cat {p}" for p in paths]
    units = plan_units([*urls, paths[0]], {u: scan(u) for u in [*urls, paths[0]]}, Selection(), unit_size=2).units
    queue = UnitQueue(units, sequential)
    assert len(queue) == 9
    first = queue.take(0)  # the seekable shard's units go first to whoever asks
    assert not sequential(first.shard)
    taken = {0: [], 1: []}
    while queue:
        for actor in (0, 1):
            unit = queue.take(actor)
            if unit is not None:
                taken[actor].append(unit)
    streams = {a: {u.shard for u in us if sequential(u.shard)} for a, us in taken.items()}
    assert streams[0].isdisjoint(streams[1]) and streams[0] | streams[1] == set(urls)
    for us in taken.values():
        for url in urls:
            firsts = [min(u.positions) for u in us if u.shard == url]
            assert firsts == sorted(firsts)
    # a lost actor gives its stream back, and its unit returns in position order
    queue = UnitQueue([u for u in units if u.shard == urls[0]], sequential)
    a, b = queue.take(0), queue.take(0)
    assert queue.take(1) is None  # actor 0 owns the stream
    queue.release(0)
    queue.appendleft(b)
    queue.appendleft(a)
    assert [min(u.positions) for u in queue] == [0, 2, 4]
    assert queue.take(1) is a


def test_rscert_index_skips_up_to_date_sidecars_and_reindexes_changed_ones(tmp_path, capsys):
    paths = write_shards(tmp_path / "data", shards=2, per_shard=3)
    spec = f"{tmp_path}/data/data-*.tar"
    assert main(["index", spec]) == 0
    assert capsys.readouterr().out.count("indexed (3 samples)") == 2
    assert main(["index", spec]) == 0
    assert capsys.readouterr().out.count("up to date") == 2
    write_shards(tmp_path / "other", shards=1, per_shard=5, seed=2)
    shutil.copy(tmp_path / "other" / "data-000000.tar", paths[0])
    assert main(["index", spec]) == 0
    out = capsys.readouterr().out
    assert out.count("up to date") == 1 and "indexed (5 samples)" in out
    assert main(["index", f"pipe:cat {paths[0]}"]) == 2
    ids = np.unique([json.loads(p.read_text())["nsamples"] for p in (tmp_path / "data").glob("*" + SIDECAR_SUFFIX)])
    assert sorted(ids.tolist()) == [3, 5]


def test_compact_units_give_back_what_they_were_made_of_and_the_planner_drops_cut_indexes(tmp_path):
    """The driver holds every pending unit (issue 21: 5 million inputs), so units store arrays and one key
    string; what they give back (and send to workers) must be exactly the tuples they were made of."""
    import pickle

    from rscert.data.plan import Planner, Unit, span_reads

    plain = Unit("u", "s.tar", (3, 4, 9), (103, 104, 109), ("a", "", "ü.x"), ((3, 0, 1024), (9, 4096, 512)), {"k": 1})
    odd = Unit("v", "s.tar", (0, 1), (7, 3), ("with\x00nul", "b"))  # indices not a shift; a key with a NUL
    empty = Unit("w", "s.tar", (), (), ())
    for unit, fields in [(plain, ((3, 4, 9), (103, 104, 109), ("a", "", "ü.x"), ((3, 0, 1024), (9, 4096, 512)))),
                         (odd, ((0, 1), (7, 3), ("with\x00nul", "b"), None)), (empty, ((), (), (), None))]:
        assert (unit.positions, unit.indices, unit.keys, unit.reads) == fields
        assert all(isinstance(v, int) for v in unit.positions + unit.indices)
        assert Unit.from_json(json.loads(json.dumps(unit.to_json()))) == unit == pickle.loads(pickle.dumps(unit))
    assert plain != Unit("u", "s.tar", (3, 4, 9), (103, 104, 110), ("a", "", "ü.x"), plain.reads, {"k": 1})

    paths = write_shards(tmp_path / "d", shards=3, per_shard=10)
    indexes = {str(p): scan(str(p)) for p in paths}
    planner = Planner(list(indexes), Selection(skip=3), unit_size=2)
    units = [u for url in reversed(indexes) for u in planner.add(url, indexes[url])]
    assert not planner.entries  # every shard cut: no index is kept
    assert [u.indices for u in units] == [(0, 3), (6, 9), (12, 15), (18,), (21, 24), (27,)]
    for u in units:
        index = indexes[u.shard]
        assert u.keys == tuple(index.keys[p] for p in u.positions)
        assert u.reads == span_reads(u.positions, index.offsets, index.sizes)
