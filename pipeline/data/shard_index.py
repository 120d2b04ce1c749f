"""Shard indexes: each sample's key and byte span in its shard, and what identifies the shard's content.

With an index, a unit reads only its samples' bytes (one ranged read per run of consecutive
positions, :func:`rscert.data.shards.read_span`) instead of walking its shard from the first byte, so
a job reads its dataset about once. An index is written once per shard: by ``rscert index SPEC``
as a *sidecar* next to the shard (``<shard URL>.rscert-index.json``), or by a certify run's planning
pass into its output folder (``OUT/_rscert_index/``, one file per shard, each saved as soon as its
shard is scanned). Planning uses a sidecar when one is present, so a rerun or a second sigma never
scans the shard again.

Format (JSON, one object per shard; the first three fields are those of a shard entry in WebDataset's
``wids`` shard index, ``wids-shard-index-v1``, which lists shards but not sample offsets)::

    {"__kind__": "rscert-shard-index-v1",
     "url": "s3://bucket/imagenet-val-000000.tar",
     "nsamples": 782,
     "filesize": 103219200,
     "identity": {"store": "fsspec", "size": 103219200, "etag": "9b2c...", "sha256": "e3b0..."},
     "samples": [["ILSVRC2012_val_00000001", 0, 133120], ...]}

``samples`` holds ``[key, offset, size]`` per sample in shard order: ``offset`` is the byte where
the sample's first tar header starts (a PAX or GNU long-name header included), ``size`` the bytes
to the end of its last member's data, rounded up to whole 512-byte tar blocks. Keys and grouping
follow WebDataset (``__key__``: consecutive members sharing the name up to the first dot).

``identity`` is the shard's content identity record (:mod:`rscert.data.shard_identity`: size, mtime
or ETag/version, and the sha256 of the content, taken when the shard is indexed). Before a run uses
an index it checks the shard against the record (metadata first; the content is hashed again only
when metadata cannot settle it): a sidecar that no longer matches its shard is ignored (the shard is
indexed again), and a shard whose content changed since the folder's run indexed it runs no unit.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from rscert.data.shard_identity import scan_samples
from rscert.data.shards import ShardError, sequential
from rscert.store.storage import StorageError, filesystem, is_remote

KIND = "rscert-shard-index-v1"
SIDECAR_SUFFIX = ".rscert-index.json"


@dataclass
class ShardIndex:
    """One shard's samples (keys, byte offsets and sizes, in order) and its content identity."""

    url: str
    identity: dict[str, Any]
    keys: list[str]
    offsets: list[int] | None = None  # None: keys only (an output folder written before offsets existed)
    sizes: list[int] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def ranged(self) -> bool:
        """Whether units can read this shard by byte span (offsets known, the source can seek)."""
        return self.offsets is not None and not sequential(self.url)

    def to_json(self) -> dict:
        samples = [[k, o, s] for k, o, s in zip(self.keys, self.offsets or [], self.sizes or [], strict=True)]
        return {"__kind__": KIND, "url": self.url, "nsamples": len(self.keys),
                "filesize": self.identity.get("size"), "identity": self.identity, "samples": samples}

    @classmethod
    def from_json(cls, data: dict, url: str | None = None) -> ShardIndex:
        if data.get("__kind__") != KIND:
            raise ValueError(f"not a shard index ({KIND}): __kind__ is {data.get('__kind__')!r}")
        samples = data["samples"]
        if len(samples) != data["nsamples"]:
            raise ValueError(f"nsamples is {data['nsamples']} but {len(samples)} samples are listed")
        keys = [str(s[0]) for s in samples]
        return cls(url or data["url"], dict(data["identity"]), keys, [int(s[1]) for s in samples],
                   [int(s[2]) for s in samples])


def scan(url: str, storage_options: dict[str, Any] | None = None) -> ShardIndex:
    """Index a shard: its tar headers (a seekable local file skips member data; a stream is read once,
    whole) and its identity record, sha256 included (:func:`rscert.data.shard_identity.scan_samples`)."""
    samples, record = scan_samples(url, storage_options)
    return ShardIndex(url, record, [s.key for s in samples], [s.offset for s in samples],
                      [s.end - s.offset for s in samples])


def sidecar_url(url: str) -> str | None:
    """Where ``rscert index`` puts a shard's index: next to it (None for ``pipe:`` streams)."""
    return None if url.startswith("pipe:") else url + SIDECAR_SUFFIX


def cache_name(url: str) -> str:
    """The index file's name for a shard in an output folder's ``_rscert_index/``: readable and unique."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", url.rstrip("/").rsplit("/", 1)[-1])[-60:]
    return f"{stem}.{hashlib.sha1(url.encode()).hexdigest()[:10]}.json"


def read_sidecar(url: str, storage_options: dict[str, Any] | None = None) -> ShardIndex | None:
    """The shard's sidecar index, or None when it has none (or it does not parse: then it is ignored)."""
    where = sidecar_url(url)
    if where is None:
        return None
    try:
        if is_remote(where):
            fs, path = filesystem(where, storage_options, "data")
            data = fs.cat_file(path)
        else:
            with open(where.removeprefix("file://"), "rb") as fh:
                data = fh.read()
        return ShardIndex.from_json(json.loads(data), url)
    except FileNotFoundError:
        return None
    except (OSError, StorageError, ValueError, KeyError, TypeError, IndexError):
        return None


def write_sidecar(index: ShardIndex, storage_options: dict[str, Any] | None = None) -> str:
    """Write the shard's sidecar index next to it (whole or nothing); its URL."""
    from rscert.store.results import Store

    where = sidecar_url(index.url)
    if where is None:
        raise ShardError(f"shard {index.url}: a pipe: stream has no place for a sidecar index")
    folder, name = where.rsplit("/", 1) if "/" in where else (".", where)
    store = Store(folder, storage_options)
    store.put_bytes(store.path(name), json.dumps(index.to_json(), separators=(",", ":")).encode())
    return where
