"""What identifies a shard's content, recorded per output folder, so that a resumed run never reads
other content under an index planned from earlier content (no torch, no Ray).

A run plans its units from each shard's key list, cached in the output folder, and commits rows
that describe the images it read. If a shard is rewritten (regenerated, repaired, replaced by another
with the same keys), rows certified before and after would describe different images under one
dataset index. So when a folder's run first reads a shard it records, in
``OUT/_rscert_shard_identity.json``::

    {"format": "rscert-shard-identity/v1",
     "shards": {"<url>": {"store": "local", "size": 123, "mtime_ns": 170..., "sha256": "ab..."}, ...}}

and every later submission checks each shard against its record before planning (a shard that changed
runs no unit and fails the job, named, while the other shards go on), and every unit checks the shard
it opens against the record (a shard changed while the run goes on fails the units that read it after).

What each store allows (decided here):

* **Local files** (and ``file://``): ``size``, ``mtime_ns`` and ``sha256`` of the whole file, hashed
  when the shard is first scanned (one more sequential read of the file: the first indexing of a
  folder takes about 3x the header-only key scan, docs/benchmarks.md section 8). Check: the size must
  match; an equal modification time is taken as the same content (rsync's quick check; a tool that
  rewrites a file *and* restores its old modification time at the same size defeats it); a different
  modification time at the same size re-hashes the file (a restored or copied shard passes, a
  rewritten one is refused). Units compare ``fstat`` of the file
  they opened (size, modification time) with the record.
* **Object stores and other fsspec URLs**: the shard is streamed whole when first scanned, so its
  ``sha256`` comes free; with it ``size`` and what the store reports that changes with the content:
  ``etag`` (S3's ``ETag``, GCS's ``etag``), ``version`` (S3 ``VersionId``, GCS ``generation``) and
  ``checksum`` (GCS ``md5Hash``/``crc32c``) where present. Check: the size must match; equal strong
  tokens (every recorded one) mean the same object; otherwise (an ETag changed by a re-upload in other
  parts, a store that reports none) the object is streamed and hashed again. Units compare the size
  and tokens of the object they open.
* **``pipe:`` streams**: nothing but the bytes identifies a stream, so ``size`` and ``sha256`` of the
  stream; every later submission re-runs the command and hashes it (the cost of a scan), and units
  cannot check (they read only up to their last input): a command whose output changes *during* a
  run is caught by the key check of the unit and by the next submission's hash, not before.

Folders written before this record existed get it on their next submission (recorded, not checked).
Removing a shard's entry from the record accepts the shard as it is now: do that only for a shard
whose content you know is the one the committed rows describe.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from rscert.data.shards import RawSample, ShardError, walk
from rscert.store.storage import filesystem, is_remote

FORMAT = "rscert-shard-identity/v1"
CHANGED = "changed since this folder's run indexed it ({reason}); none of its units ran"
"""A job's failure for a shard whose content is not the one the run planned from."""
_TOKENS = {"ETag": "etag", "etag": "etag", "VersionId": "version", "generation": "version",
           "md5Hash": "checksum", "crc32c": "checksum", "ContentMD5": "checksum"}


class Hasher:
    """sha256 and byte count of a stream, fed by the shard walker as it reads."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes) -> None:
        self.sha.update(data)
        self.size += len(data)


def store_kind(url: str) -> str:
    if url.startswith("pipe:"):
        return "pipe"
    return "fsspec" if is_remote(url) else "local"


def _local_path(url: str) -> str:
    return url.removeprefix("file://")


def metadata(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the store says about the shard without reading it (nothing for a pipe); ShardError if gone."""
    kind = store_kind(url)
    if kind == "pipe":
        return {"store": kind}
    try:
        if kind == "local":
            st = os.stat(_local_path(url))
            return {"store": kind, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        fs, path = filesystem(url, storage_options, "data")
        info = fs.info(path)
    except FileNotFoundError:
        raise ShardError(f"shard {url}: no such file") from None
    except OSError as exc:
        raise ShardError(f"shard {url}: cannot read its metadata: {exc}") from None
    return remote_metadata(info)


def remote_metadata(info: dict[str, Any]) -> dict[str, Any]:
    """``size`` and the content tokens of an fsspec ``info()`` (or an open file's ``details``)."""
    out: dict[str, Any] = {"store": "fsspec", "size": info.get("size")}
    for name, field in _TOKENS.items():
        value = info.get(name)
        if value not in (None, "") and field not in out:
            out[field] = str(value).strip('"')
    return out


def _file_sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def scan_samples(url: str, storage_options: dict[str, Any] | None = None
                 ) -> tuple[list[RawSample], dict[str, Any]]:
    """The shard's samples (keys and byte spans, no data; see :func:`~rscert.data.shards.walk`) and its
    identity record. Raises :class:`ShardError` for a shard that cannot be read, or that changed while
    it was read."""
    before = metadata(url, storage_options)
    if before["store"] == "local":
        samples = list(walk(url, wanted=set(), storage_options=storage_options))
        try:
            sha = _file_sha256(_local_path(url))
        except OSError as exc:
            raise ShardError(f"shard {url}: cannot read: {exc}") from None
        record = {**before, "sha256": sha}
    else:
        hasher = Hasher()
        samples = list(walk(url, wanted=set(), storage_options=storage_options, digest=hasher))
        record = {**before, "sha256": hasher.sha.hexdigest()}
        if before["store"] == "pipe":
            record["size"] = hasher.size
        elif before.get("size") is not None and before["size"] != hasher.size:
            raise ShardError(f"shard {url}: changed while it was read ({hasher.size} bytes read, "
                             f"{before['size']} listed)")
    if metadata(url, storage_options) != before:
        raise ShardError(f"shard {url}: changed while it was read")
    return samples, record


def scan(url: str, storage_options: dict[str, Any] | None = None) -> tuple[list[str], dict[str, Any]]:
    """The shard's keys (as :func:`~rscert.data.shards.shard_keys`) and its identity record."""
    samples, record = scan_samples(url, storage_options)
    return [s.key for s in samples], record


def identify(url: str, storage_options: dict[str, Any] | None = None, content: bool = True) -> dict[str, Any]:
    """The shard's identity record: its metadata, and with ``content`` its sha256 (reads it whole)."""
    return scan(url, storage_options)[1] if content else metadata(url, storage_options)


def _strong(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in ("etag", "version", "checksum") if k in record}


def differs(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """Why ``current`` metadata shows other content than ``recorded`` (None: no sign of a change; it
    may still be needed to hash, see :func:`metadata_settles`)."""
    if recorded.get("store") != current.get("store"):
        return f"its store changed ({recorded.get('store')} -> {current.get('store')})"
    if recorded.get("size") is not None and current.get("size") is not None and recorded["size"] != current["size"]:
        return f"its size changed ({recorded['size']} -> {current['size']} bytes)"
    return None


def metadata_settles(recorded: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether equal metadata suffice to call the content unchanged (no re-hash needed)."""
    if current["store"] == "local":
        return recorded.get("mtime_ns") == current.get("mtime_ns") and recorded.get("size") == current.get("size")
    tokens = _strong(recorded)
    return bool(tokens) and tokens == _strong(current)


def verify(url: str, recorded: dict[str, Any], storage_options: dict[str, Any] | None = None,
           keys: list[str] | None = None) -> tuple[str | None, dict[str, Any]]:
    """``(reason, record)``: reason is None when the shard still holds the recorded content (then
    ``record`` is the up-to-date record, e.g. a new modification time after a verified restore), else
    why it does not (naming what changed). Reads the shard whole only when metadata cannot settle it."""
    try:
        current = metadata(url, storage_options)
    except ShardError as exc:
        return str(exc).removeprefix(f"shard {url}: "), recorded
    reason = differs(recorded, current)
    if reason:
        return reason, recorded
    if metadata_settles(recorded, current):
        return None, recorded
    try:
        now_keys, record = scan(url, storage_options)
    except ShardError as exc:
        return str(exc).removeprefix(f"shard {url}: "), recorded
    if record.get("sha256") != recorded.get("sha256"):
        return "its content changed (sha256 differs)", recorded
    if keys is not None and now_keys != keys:
        return "its sample keys changed", recorded
    return None, record


def check_open(url: str, recorded: dict[str, Any] | None, current: dict[str, Any]) -> None:
    """For a unit: the shard it just opened (``current``: fstat or the object's details) must still be
    the recorded one. Raises :class:`ShardError` naming the shard; nothing to check for pipes."""
    if not recorded or current.get("store") in (None, "pipe"):
        return
    if current["store"] == "fsspec":
        current = remote_metadata(current)
    reason = differs(recorded, current)
    if reason is None and current["store"] == "local" and recorded.get("mtime_ns") != current.get("mtime_ns"):
        reason = "its modification time changed"
    if reason is None and current["store"] == "fsspec" and _strong(recorded) and _strong(recorded) != _strong(current):
        reason = "its ETag or version changed"
    if reason:
        raise ShardError(f"shard {url}: changed since the run was planned ({reason}); a rerun checks its content "
                         "and refuses it unless it holds the planned content again")
