"""The results store: Parquet schema, atomic unit commits, the run manifest, what is done (no torch, no Ray).

Layout of an output folder (local path or any fsspec URL)::

    OUT/_rscert_manifest.json     the run's configuration, fingerprint, model and data facts
    OUT/_rscert_index/            each shard's index (keys, byte spans, its content identity record), saved
                                  as its shard is indexed (rscert.data.shard_index; reruns plan the same units)
    OUT/_rscert_shard_identity.json  what identifies each shard's content (size, mtime or ETag, sha256;
                                  rscert.data.shard_identity): a shard that changed is refused on resume
    OUT/_rscert_layout.json       which shard content holds which dataset indices (rscert.data.layout)
    OUT/_rscert_shards.json       key lists of the shards (folders written before shard indexes; read only)
    OUT/units/<unit_id>.parquet   one file per committed unit
    OUT/units/compact-*.parquet   many units' rows in one file, after ``rscert compact`` (rscert.store.compact)
    OUT/_rscert_executions/       finished unit executions, JSON lines, written by the driver in batches
                                  (audit log)
    OUT/_rscert_lease.json        the running driver's lease (host, pid, heartbeat; see rscert.store.lease)
    OUT/_rscert_selection.json    the latest submission's selected dataset indices (rscert.store.selection_record)
    OUT/_rscert_quarantine/       unit files found unreadable, set aside, never deleted (``*.bad``,
                                  so that no ``**/*.parquet`` glob picks them up)

Files starting with ``_`` or ``.`` are ignored by ``pyarrow.dataset``; ``polars.scan_parquet(
"OUT/**/*.parquet")`` and ``pyarrow.dataset.dataset("OUT")`` both read the units as one table.
A unit file appears whole or not at all: local files are written under a temporary name and
renamed; object stores get a single PUT of the finished bytes. Committed = present and readable
with this run's fingerprint in its key-value metadata. The manifest is created exclusively, so two
drivers never both think they created it. Files of other fingerprints are left alone (never removed).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from rscert.store.atomic import atomic_path
from rscert.store.storage import StorageError, create_exclusive, filesystem, reaching
from rscert.store.tally import SUMMARY_COLUMNS, RowFacts

MANIFEST = "_rscert_manifest.json"
SHARD_INDEX = "_rscert_shards.json"  # read only: folders written before shard indexes
SHARD_IDENTITY = "_rscert_shard_identity.json"
INDEX_DIR = "_rscert_index"
UNITS_DIR = "units"
EXECUTIONS_DIR = "_rscert_executions"
QUARANTINE_DIR = "_rscert_quarantine"
COMPACTED_FROM = b"rscert.compacted_from"  # a compacted file's key-value metadata: the unit files it replaces

SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("unit_id", pa.string()),
        pa.field("shard", pa.string()),
        pa.field("key", pa.string()),
        pa.field("index", pa.int64()),
        pa.field("label", pa.int64()),
        pa.field("prediction", pa.int64()),
        pa.field("top_class", pa.int64()),
        pa.field("radius", pa.float64()),
        pa.field("correct", pa.bool_()),
        pa.field("n0", pa.int64()),
        pa.field("n", pa.int64()),
        pa.field("n_max", pa.int64()),
        pa.field("sampling", pa.string()),
        pa.field("stop_reason", pa.string()),
        pa.field("count_select", pa.int64()),
        pa.field("count_top", pa.int64()),
        pa.field("p_lower", pa.float64()),
        pa.field("count_second", pa.int64()),
        pa.field("p_upper", pa.float64()),
        pa.field("soft_sum", pa.float64()),
        pa.field("soft_sumsq", pa.float64()),
        pa.field("p_value", pa.float64()),
        pa.field("alpha", pa.float64()),
        pa.field("sigma", pa.float64()),
        pa.field("noise", pa.string()),
        pa.field("norm", pa.string()),
        pa.field("dim", pa.int64()),
        pa.field("bound", pa.string()),
        pa.field("vote", pa.string()),
        pa.field("temperature", pa.float64()),
        pa.field("seed", pa.int64()),
        pa.field("precision", pa.string()),
        pa.field("clamp", pa.bool_()),
        pa.field("preset", pa.string()),
        pa.field("num_classes", pa.int64()),
        pa.field("model", pa.string()),
        pa.field("checkpoint_sha256", pa.string()),
        pa.field("denoiser", pa.string()),
        pa.field("denoiser_sha256", pa.string()),
        pa.field("dataset", pa.string()),
        pa.field("split", pa.string()),
        pa.field("source", pa.string()),
        pa.field("mode", pa.string()),
        pa.field("train_sigma", pa.float64()),
        pa.field("seconds", pa.float64()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
    ]
)
"""One row per input; column meanings in docs/schema.md."""


class OutputError(ValueError):
    """The output folder cannot be used (a file, another run's configuration, not writable)."""


KEY_COLUMNS = ["run_id", "dataset", "split", "model", "checkpoint_sha256", "denoiser", "denoiser_sha256",
               "train_sigma", "noise", "norm", "bound", "vote", "temperature", "sigma", "n0", "n", "n_max",
               "sampling", "alpha", "seed", "precision", "clamp", "preset", "num_classes", "mode", "source"]
"""The columns that identify a run's configuration: every stored setting that can change a result, and
the run. The analysis keeps rows differing in any of them apart; the selection record stores them
(:meth:`rscert.config.certify.CertifyConfig.run_columns`)."""


def table_from_rows(rows: Iterable[dict], metadata: dict[str, str]) -> pa.Table:
    """Rows (dicts; missing columns become null) as a table of SCHEMA with key-value metadata."""
    rows = list(rows)
    columns = {f.name: [r.get(f.name) for r in rows] for f in SCHEMA}
    table = pa.Table.from_pydict(columns, schema=SCHEMA)
    return table.replace_schema_metadata({**(SCHEMA.metadata or {}), **{k: str(v) for k, v in metadata.items()}})


@dataclass
class Committed:
    """What an output folder holds under one fingerprint."""

    units: set[str] = field(default_factory=set)  # unit ids
    facts: RowFacts = field(default_factory=RowFacts.empty)  # their rows' summary columns
    quarantined: list[str] = field(default_factory=list)  # unreadable files set aside by this read

    @property
    def indices(self) -> set[int]:
        """Dataset indices with a committed row (``facts.index`` is the same as an array)."""
        return set(self.facts.index.tolist())


class _UnreadableError(Exception):
    """A unit file whose complete bytes do not parse as Parquet."""


@dataclass
class Store:
    """An output folder on some filesystem (a local path or any fsspec URL, with storage options)."""

    url: str
    storage_options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        try:
            self.fs, self.root = filesystem(self.url, self.storage_options, "out")
        except StorageError as exc:
            raise OutputError(str(exc)) from None
        self.root = self.root.rstrip("/") or "/"
        self.local = isinstance(self.fs, LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # -- setup -----------------------------------------------------------------------------------
    def check(self) -> None:
        self.fs.invalidate_cache()
        with reaching(self.url, "out"):
            if self.fs.exists(self.root) and not self.fs.isdir(self.root):
                raise OutputError(f"out: {self.url!r} is a file, not a folder")

    def create_folders(self) -> None:
        """Check the output URL is not a file and create its folders (units/, the executions log)."""
        self.check()
        try:
            self.fs.makedirs(self.path(UNITS_DIR), exist_ok=True)
            self.fs.makedirs(self.path(EXECUTIONS_DIR), exist_ok=True)
        except OSError as exc:
            raise OutputError(f"out: cannot create {self.url!r}: {exc}") from None

    def read_json(self, name: str) -> dict | None:
        """The JSON file ``name``, or None if it does not exist."""
        try:
            return json.loads(self.fs.cat_file(self.path(name)))
        except FileNotFoundError:
            return None

    def write_json(self, name: str, payload: dict) -> None:
        self.put_bytes(self.path(name), json.dumps(payload, indent=2, sort_keys=True).encode())

    def create_json(self, name: str, payload: dict) -> bool:
        """Create ``name`` exclusively (see :func:`rscert.store.storage.create_exclusive`); False if it exists."""
        try:
            create_exclusive(self.fs, self.path(name), json.dumps(payload, indent=2, sort_keys=True).encode())
        except FileExistsError:
            return False
        return True

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(name))

    def put_bytes(self, final: str, data: bytes) -> None:
        """Whole or nothing: temporary file + rename locally, one PUT elsewhere."""
        if self.local:
            with atomic_path(final) as tmp, open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        else:
            self.fs.pipe_file(final, data)

    # -- units -----------------------------------------------------------------------------------
    def unit_path(self, unit_id: str) -> str:
        return self.path(UNITS_DIR, f"{unit_id}.parquet")

    def put_table(self, final: str, table: pa.Table, compression: str = "zstd") -> None:
        """A Parquet file, whole or nothing (see put_bytes)."""
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression=compression)
        self.put_bytes(final, buffer.getvalue())

    def commit_unit(self, unit_id: str, table: pa.Table) -> None:
        self.put_table(self.unit_path(unit_id), table)

    def record_executions(self, summaries: list[dict]) -> None:
        """Finished unit executions (an audit log: counts re-runs), many per file: one JSON line each in
        ``_rscert_executions/<time>-<random>.jsonl``, written by the driver in batches."""
        if not summaries:
            return
        name = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.jsonl"
        self.put_bytes(self.path(EXECUTIONS_DIR, name), "".join(json.dumps(s) + "\n" for s in summaries).encode())

    def executions(self) -> list[dict]:
        """Every recorded execution (batched ``.jsonl`` files, and the one-per-unit ``.json`` files of
        folders written before batching)."""
        self.fs.invalidate_cache()
        out = []
        for path in sorted(self.fs.glob(self.path(EXECUTIONS_DIR, "*.json*"))):
            text = self.fs.cat_file(path).decode()
            if path.endswith(".jsonl"):
                out += [json.loads(line) for line in text.splitlines() if line.strip()]
            elif path.endswith(".json"):
                out.append(json.loads(text))
        return out

    def unit_files(self) -> list[str]:
        self.fs.invalidate_cache()
        return sorted(self.fs.glob(self.path(UNITS_DIR, "*.parquet")))

    def _unit_facts(self, path: str, fingerprint: str) -> tuple[bool, RowFacts, list[str]]:
        """(carries this fingerprint, the summary columns of its rows): one whole-file read (one GET).
        A failed read is tried once more; if that fails too the OSError propagates (storage trouble, as
        far as anyone can tell); bytes that do not parse are :class:`_UnreadableError`."""
        try:
            data = self.fs.cat_file(path)
        except FileNotFoundError:
            raise
        except OSError:
            data = self.fs.cat_file(path)  # an OSError here: storage trouble, not a bad file
        try:
            return _facts(pq.ParquetFile(pa.BufferReader(data)), fingerprint)
        except (OSError, pa.ArrowException, ValueError) as exc:  # in-memory bytes: the content is bad
            raise _UnreadableError(f"{type(exc).__name__}: {exc}") from None

    def committed(self, fingerprint: str) -> Committed:
        """Unit ids committed under ``fingerprint`` and their rows' summary columns (each file read once).

        Files with another fingerprint stay where they are and count for nothing. A file whose
        complete bytes are not Parquet (confirmed by a second, whole read) is moved to
        ``_rscert_quarantine/``, never deleted. A read that fails with an ``OSError`` (a storage
        fault) raises :class:`OutputError` and moves nothing: rerun when the storage answers.
        """
        result = Committed()
        files = self.unit_files()

        def facts(path: str) -> tuple[str, tuple[bool, RowFacts, list[str]] | str | None]:
            try:
                return path, self._unit_facts(path, fingerprint)
            except FileNotFoundError:
                return path, None  # gone since the listing (replaced by a retry's identical commit)
            except _UnreadableError as exc:
                return path, str(exc)

        workers = 1 if self.local else 16
        try:
            with ThreadPoolExecutor(workers) as pool:
                found = list(pool.map(facts, files))
        except OSError as exc:
            raise OutputError(f"out: cannot read the committed units of {self.url!r} ({type(exc).__name__}: "
                              f"{exc}); nothing was moved or deleted. Rerun when the storage answers.") from None
        parts = []
        # unit files a compacted file replaces (left behind by an interrupted `rscert compact`) count once
        replaced = {n for _, fact in found if isinstance(fact, tuple) for n in fact[2]}
        for path, fact in found:
            name = path.rsplit("/", 1)[-1].removesuffix(".parquet")
            if isinstance(fact, str):
                result.quarantined.append(f"{name}.parquet ({fact})")
                self._quarantine(path, name)
            elif fact is not None and fact[0] and f"{name}.parquet" not in replaced:
                result.units.add(name)
                parts.append(fact[1])
        result.facts = RowFacts.concat(parts)
        return result

    def committed_units(self, fingerprint: str) -> set[str]:
        """Unit ids committed under ``fingerprint`` (see :meth:`committed`)."""
        return self.committed(fingerprint).units

    def _quarantine(self, path: str, name: str) -> None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        self.fs.makedirs(self.path(QUARANTINE_DIR), exist_ok=True)
        self.fs.mv(path, self.path(QUARANTINE_DIR, f"{name}.parquet.{stamp}.{uuid.uuid4().hex[:6]}.bad"))


def _facts(parquet: pq.ParquetFile, fingerprint: str) -> tuple[bool, RowFacts, list[str]]:
    """(carries ``fingerprint``, its rows' summary columns, the unit files it replaces if compacted)."""
    meta = parquet.schema_arrow.metadata or {}
    if meta.get(b"rscert.fingerprint", b"").decode() != fingerprint:
        return False, RowFacts.empty(), []
    replaces = json.loads(meta.get(COMPACTED_FROM, b"[]"))
    return True, RowFacts.from_table(parquet.read(columns=SUMMARY_COLUMNS)), replaces


def diff_configs(stored: dict, current: dict) -> list[str]:
    """Human-readable differences between two fingerprinted configurations."""
    keys = sorted(set(stored) | set(current))
    return [f"{k}: {stored.get(k)!r} in the folder, {current.get(k)!r} now"
            for k in keys if stored.get(k) != current.get(k)]
