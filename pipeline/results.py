"""The results store: Parquet schema, atomic unit commits, the run manifest, what is done (no torch, no Ray).

Layout of an output folder (local path or any fsspec URL)::

    OUT/_rscert_manifest.json     the run's configuration, fingerprint, model and data facts
    OUT/_rscert_shards.json       the key list of every shard scanned (so reruns plan the same units)
    OUT/units/<unit_id>.parquet   one file per committed unit
    OUT/_rscert_executions/       one small JSON per finished unit execution (audit log)

Files starting with ``_`` or ``.`` are ignored by ``pyarrow.dataset``; ``polars.scan_parquet(
"OUT/**/*.parquet")`` and ``pyarrow.dataset.dataset("OUT")`` both read the units as one table.
A unit file appears whole or not at all: local files are written under a temporary name and
renamed; object stores get a single PUT of the finished bytes. Committed = present and readable
with this run's fingerprint in its key-value metadata.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from .atomic import atomic_path

MANIFEST = "_rscert_manifest.json"
SHARD_INDEX = "_rscert_shards.json"
UNITS_DIR = "units"
EXECUTIONS_DIR = "_rscert_executions"

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
        pa.field("p_value", pa.float64()),
        pa.field("alpha", pa.float64()),
        pa.field("sigma", pa.float64()),
        pa.field("noise", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("precision", pa.string()),
        pa.field("clamp", pa.bool_()),
        pa.field("preset", pa.string()),
        pa.field("num_classes", pa.int64()),
        pa.field("model", pa.string()),
        pa.field("checkpoint_sha256", pa.string()),
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


def table_from_rows(rows: Iterable[dict], metadata: dict[str, str]) -> pa.Table:
    """Rows (dicts; missing columns become null) as a table of SCHEMA with key-value metadata."""
    rows = list(rows)
    columns = {f.name: [r.get(f.name) for r in rows] for f in SCHEMA}
    table = pa.Table.from_pydict(columns, schema=SCHEMA)
    return table.replace_schema_metadata({**(SCHEMA.metadata or {}), **{k: str(v) for k, v in metadata.items()}})


@dataclass
class Store:
    """An output folder on some filesystem."""

    url: str

    def __post_init__(self) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.root = self.root.rstrip("/") or "/"
        self.local = isinstance(self.fs, LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # -- setup -----------------------------------------------------------------------------------
    def check(self) -> None:
        if self.fs.exists(self.root) and not self.fs.isdir(self.root):
            raise OutputError(f"out: {self.url!r} is a file, not a folder")

    def prepare(self) -> None:
        self.check()
        try:
            self.fs.makedirs(self.path(UNITS_DIR), exist_ok=True)
        except OSError as exc:
            raise OutputError(f"out: cannot create {self.url!r}: {exc}") from None

    def read_json(self, name: str) -> dict | None:
        path = self.path(name)
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "r") as fh:
            return json.load(fh)

    def write_json(self, name: str, payload: dict) -> None:
        self.put_bytes(self.path(name), json.dumps(payload, indent=2, sort_keys=True).encode())

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

    def record_execution(self, unit_id: str, summary: dict) -> None:
        """One small JSON file per finished unit execution (an audit log: counts re-runs)."""
        self.fs.makedirs(self.path(EXECUTIONS_DIR), exist_ok=True)
        name = f"{unit_id}.{uuid.uuid4().hex[:12]}.json"
        self.put_bytes(self.path(EXECUTIONS_DIR, name), json.dumps(summary).encode())

    def executions(self) -> list[dict]:
        out = []
        for path in sorted(self.fs.glob(self.path(EXECUTIONS_DIR, "*.json"))):
            with self.fs.open(path, "r") as fh:
                out.append(json.load(fh))
        return out

    def committed_units(self, fingerprint: str) -> set[str]:
        """Unit ids whose files are present, readable, and carry this fingerprint. Others are removed."""
        done = set()
        for path in self.fs.glob(self.path(UNITS_DIR, "*.parquet")):
            name = path.rsplit("/", 1)[-1].removesuffix(".parquet")
            try:
                with self.fs.open(path, "rb") as fh:
                    meta = pq.read_metadata(fh).metadata or {}
            except (OSError, pa.ArrowInvalid):
                self.fs.rm(path)  # cannot happen through commit_unit; a foreign or damaged copy
                continue
            if meta.get(b"rscert.fingerprint", b"").decode() == fingerprint:
                done.add(name)
        return done


def diff_configs(stored: dict, current: dict) -> list[str]:
    """Human-readable differences between two fingerprinted configurations."""
    keys = sorted(set(stored) | set(current))
    return [f"{k}: {stored.get(k)!r} in the folder, {current.get(k)!r} now"
            for k in keys if stored.get(k) != current.get(k)]
