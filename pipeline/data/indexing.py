"""The planning pass over a run's shards: each shard's index from the output folder, its sidecar, or a scan.

For every shard, in parallel (threads: object-store requests overlap):

1. ``OUT/_rscert_index/<name>.json``: the index this output folder planned with before (a rerun plans
   the same units);
2. else the shard's sidecar (``<shard>.rscert-index.json``, written by ``rscert index``), copied into
   the folder;
3. else a scan of the shard's tar headers, saved into the folder as soon as it is done, so a planning
   pass that is killed keeps every shard it finished.

Each shard's index carries its content identity record (:mod:`rscert.data.shard_identity`), and the
folder keeps the record it first took of every shard in ``OUT/_rscert_shard_identity.json`` (written
whole when planning ends). An index from the folder is checked against that record, metadata first
(the content is hashed again only when metadata cannot settle it): a shard whose content changed
since the folder's run indexed it runs no unit and is reported by name, while its recorded keys still
give the later shards' indices. A sidecar that no longer matches its shard is ignored and the shard
is scanned. Output folders written before indexes existed hold ``_rscert_shards.json`` (key lists
only): their shards are scanned once, checked against those keys and the identity record, and indexed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from typing import Any

from tqdm import tqdm

from rscert.data.shard_identity import FORMAT as IDENTITY_FORMAT
from rscert.data.shard_identity import verify
from rscert.data.shard_index import ShardIndex, cache_name, read_sidecar, scan
from rscert.data.shards import ShardError
from rscert.store.results import INDEX_DIR, SHARD_IDENTITY, SHARD_INDEX, Store

SCAN_THREADS = 16
AHEAD = 4
"""Shards indexed at most this many times the threads past the first shard not yet indexed."""


def _cached(store: Store) -> dict[str, str]:
    """Index files already in the folder, by file name -> path (one listing)."""
    try:
        return {p.rsplit("/", 1)[-1]: p for p in store.fs.glob(store.path(INDEX_DIR, "*.json"))}
    except FileNotFoundError:
        return {}


def _save(store: Store, index: ShardIndex) -> None:
    store.put_bytes(store.path(INDEX_DIR, cache_name(index.url)),
                    json.dumps(index.to_json(), separators=(",", ":")).encode())


def _one(store: Store, url: str, cached: dict[str, str], legacy: dict, recorded: dict[str, dict],
         storage_options: dict[str, Any] | None) -> tuple[ShardIndex, str | None]:
    """The shard's index, and why it is not the content the folder's run planned from (None: it is).
    Raises ShardError for a shard that cannot be read."""
    name = cache_name(url)
    index = None
    if name in cached:
        try:
            index = ShardIndex.from_json(json.loads(store.fs.cat_file(cached[name])), url)
        except (ValueError, KeyError, TypeError, IndexError):
            index = None  # a damaged index file: index again below
    if index is not None:
        reason, record = verify(url, recorded.get(url) or index.identity, storage_options, keys=index.keys)
        if reason is None and record != index.identity:  # e.g. a restored file: a new mtime, the same bytes
            index.identity = record
            _save(store, index)
        return index, reason
    if isinstance(legacy.get(url), list):  # a folder written before shard indexes: its keys bind the run
        keys = list(legacy[url])
        if url in recorded:
            reason, _ = verify(url, recorded[url], storage_options, keys=keys)
            if reason is not None:
                return ShardIndex(url, recorded[url], keys), reason
        index = scan(url, storage_options)
        if index.keys != keys:
            return ShardIndex(url, recorded.get(url, {}), keys), "its sample keys differ from the folder's index"
        _save(store, index)
        return index, None
    index = read_sidecar(url, storage_options)
    if index is not None:
        reason, record = verify(url, index.identity, storage_options, keys=index.keys)
        index = None if reason is not None else ShardIndex(url, record, index.keys, index.offsets, index.sizes)
    if index is None:  # no sidecar, or one that no longer matches its shard
        index = scan(url, storage_options)
    _save(store, index)
    return index, None


def index_shards(store: Store, shards: Sequence[str], log: Callable[[str], None],
                 storage_options: dict[str, Any] | None = None, threads: int = SCAN_THREADS
                 ) -> Iterator[tuple[str, ShardIndex | str, str | None]]:
    """``(url, index or the reason it cannot be read, why it changed or None)`` for every shard, in the
    order they finish (none more than ``threads * AHEAD`` shards past the first unfinished one); the
    folder's identity record is written whole at the end."""
    store.fs.makedirs(store.path(INDEX_DIR), exist_ok=True)
    cached = _cached(store)
    legacy = store.read_json(SHARD_INDEX) or {}
    recorded = dict((store.read_json(SHARD_IDENTITY) or {}).get("shards") or {})
    bar = tqdm(total=len(shards), desc="indexing shards", unit="shard", disable=len(shards) < 8, file=sys.stderr)
    workers = max(1, min(threads, len(shards)))
    window = workers * AHEAD
    with bar, ThreadPoolExecutor(workers) as pool:
        pending: dict[Future, int] = {}  # the shards being indexed, by position
        following = 0  # the next shard to submit
        while pending or following < len(shards):
            # no shard more than `window` past the first one not yet indexed: the planner holds the
            # indexes of shards that finished before an earlier one, so they stay few (a stalled read)
            while following < len(shards) and following < min(pending.values(), default=following) + window:
                url = shards[following]
                pending[pool.submit(_one, store, url, cached, legacy, recorded, storage_options)] = following
                following += 1
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=pending.__getitem__):
                url = shards[pending.pop(future)]
                bar.update(1)
                try:
                    index, changed = future.result()
                except ShardError as exc:
                    log(f"error: {exc}")
                    yield url, str(exc), None
                    continue
                if changed is None:
                    recorded[url] = index.identity
                else:
                    log(f"error: shard {url}: not the content this folder's rows were planned from ({changed})")
                yield url, index, changed
    store.write_json(SHARD_IDENTITY, {"format": IDENTITY_FORMAT, "shards": recorded})


def index_all(store: Store, shards: Sequence[str], log: Callable[[str], None],
              storage_options: dict[str, Any] | None = None) -> dict[str, ShardIndex | str]:
    """Every shard's index (or the reason it cannot be read), by URL."""
    return {url: index for url, index, _ in index_shards(store, shards, log, storage_options)}


def _sidecar(url: str, force: bool, storage_options: dict[str, Any] | None) -> str:
    from rscert.data.shard_index import write_sidecar

    if not force:
        existing = read_sidecar(url, storage_options)
        if existing is not None and verify(url, existing.identity, storage_options, keys=existing.keys)[0] is None:
            return f"up to date ({len(existing)} samples)"
    index = scan(url, storage_options)
    write_sidecar(index, storage_options)
    return f"indexed ({len(index)} samples)"


def write_sidecars(shards: Sequence[str], storage_options: dict[str, Any] | None = None, force: bool = False,
                   threads: int = SCAN_THREADS) -> Iterator[tuple[str, str, bool]]:
    """``rscert index``: a sidecar index next to every shard (``pipe:`` streams have none), skipping shards
    whose sidecar matches their content unless ``force``. Yields ``(url, what happened, ok)`` as each ends."""
    with ThreadPoolExecutor(max(1, min(threads, len(shards)))) as pool:
        futures = {pool.submit(_sidecar, url, force, storage_options): url for url in shards}
        for future in as_completed(futures):
            url = futures[future]
            try:
                yield url, future.result(), True
            except (ShardError, OSError) as exc:
                yield url, str(exc), False
