"""``rscert compact OUT``: merge a run's unit files into a few large Parquet files (no torch, no Ray).

An ImageNet run at 32 inputs a unit leaves 1,563 small files per sigma; object stores answer per
request, so analysing many runs is dominated by request counts. Compacting merges the unit files of the
folder's run (its manifest's fingerprint) into ``units/compact-<digest>.parquet`` files of up to
``files_per_part`` unit files each (rows in index order, the same columns and key-value metadata, plus
``rscert.compacted_from``: the unit files it replaces). Files of other fingerprints are left alone.

Atomic and resumable, under the folder's driver lease (no certify run writes meanwhile):

1. ``OUT/_rscert_compact.json`` lists the parts and their unit files (written whole, once);
2. each part is written whole (temporary name + rename, or one PUT), then its unit files are deleted;
3. the journal is removed.

A run killed anywhere is finished by running the command again (a part already written is not
written twice; its unit files are deleted). Between a part's write and its unit files' deletion,
readers see its rows twice, as exact copies: ``Store.committed`` skips unit files a present part
lists, and ``rscert analyze`` counts exact copies of a row once. Certify runs and the analysis read
either layout identically, and a run may resume into a compacted folder.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rscert.store.lease import Lease
from rscert.store.results import COMPACTED_FROM, MANIFEST, OutputError, Store

JOURNAL = "_rscert_compact.json"
PREFIX = "compact-"
FORMAT = "rscert-compact/v1"


def members(metadata: dict[bytes, bytes] | None) -> list[str]:
    """The unit file names a compacted file replaces (none for a unit file)."""
    raw = (metadata or {}).get(COMPACTED_FROM)
    return json.loads(raw) if raw else []


def _plan(store: Store, fingerprint: str, files_per_part: int) -> dict:
    names = [p.rsplit("/", 1)[-1] for p in store.unit_files()]
    names = [n for n in names if not n.startswith(PREFIX)]
    parts = []
    for i in range(0, len(names), files_per_part):
        group = names[i : i + files_per_part]
        digest = hashlib.sha1("\n".join(group).encode()).hexdigest()[:12]
        parts.append({"name": f"{PREFIX}{digest}.parquet", "members": group})
    return {"format": FORMAT, "fingerprint": fingerprint, "parts": parts}


def _write_part(store: Store, part: dict, fingerprint: str) -> list[str]:
    """Write one part from its unit files (those of ``fingerprint``); the unit files it includes."""

    def read(name: str) -> tuple[str, pa.Table | None]:
        try:
            data = store.fs.cat_file(store.path("units", name))
        except FileNotFoundError:
            return name, None
        table = pq.read_table(pa.BufferReader(data))
        meta = table.schema.metadata or {}
        return name, table if meta.get(b"rscert.fingerprint", b"").decode() == fingerprint else None

    with ThreadPoolExecutor(1 if store.local else 16) as pool:
        found = [(n, t) for n, t in pool.map(read, part["members"]) if t is not None]
    if not found:
        return []
    included = [n for n, _ in found]
    first = found[0][1].schema.metadata or {}
    table = pa.concat_tables([t.replace_schema_metadata(None) for _, t in found], promote_options="permissive")
    table = table.take(pc.sort_indices(table["index"]))
    meta = {**first, b"rscert.unit_id": part["name"].removesuffix(".parquet").encode(),
            COMPACTED_FROM: json.dumps(included).encode()}
    buffer = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(meta), buffer, compression="zstd")
    store.put_bytes(store.path("units", part["name"]), buffer.getvalue())
    return included


def compact(url: str, storage_options: dict | None = None, files_per_part: int = 4096,
            log: Callable[[str], None] = print) -> list[str]:
    """Compact the run in ``url`` (see the module docstring); the parts written or finished."""
    store = Store(url, storage_options)
    manifest = store.read_json(MANIFEST)
    if manifest is None:
        raise OutputError(f"out: {url!r} is not an rscert output folder (no {MANIFEST})")
    fingerprint = manifest["fingerprint"]
    lease = Lease.acquire(store, log)
    try:
        journal = store.read_json(JOURNAL)
        if journal is None:
            journal = _plan(store, fingerprint, files_per_part)
            store.write_json(JOURNAL, journal)
        done = []
        for part in journal["parts"]:
            target = store.path("units", part["name"])
            if store.fs.exists(target):  # written before a crash: finish deleting its unit files
                with store.fs.open(target, "rb") as fh:
                    included = members(pq.ParquetFile(fh).schema_arrow.metadata)
            else:
                included = _write_part(store, part, fingerprint)
            if included:
                store.fs.rm([store.path("units", n) for n in included if store.fs.exists(store.path("units", n))])
                done.append(part["name"])
                log(f"{url}: {part['name']} holds {len(included)} unit files")
        store.remove(JOURNAL)
        store.fs.invalidate_cache()
        return done
    finally:
        lease.release()
