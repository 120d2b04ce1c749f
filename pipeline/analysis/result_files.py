"""Reading result files for the analysis: find them, check them, scan them lazily (no torch, no Ray).

A file or folder reached twice (the same path given twice, a folder and a file inside it, a path and
a symlink to it) is read once: files are identified by their resolved path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import fsspec
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from rscert.analysis.result import AnalysisError
from rscert.constants import BOUNDS, NOISE, VOTES
from rscert.stats.families import FAMILIES
from rscert.store.results import SCHEMA
from rscert.store.selection_record import SELECTION_RECORD
from rscert.store.storage import protocol

REQUIRED = {"radius", "correct", "prediction", "status", "sigma"}
IDENTITY = {"model", "dataset", "run_id", "source"}


@dataclass
class Found:
    """What the analysis reads under its paths: result files, and the selection records of native
    rscert output folders (``_rscert_selection.json``, see :mod:`rscert.store.selection_record`)."""

    parquet: list[str] = field(default_factory=list)
    records: list[str] = field(default_factory=list)


def find_results(paths: Sequence[str]) -> Found:
    """Parquet files and selection records under each path (a file, a folder searched recursively, or
    an fsspec URL), each file once however often it is reached: one listing per path. Below a folder,
    names starting with ``.`` or ``_`` are skipped, except the selection record itself. A folder with
    a selection record and no Parquet file is a run none of whose units committed: it is read."""
    found = Found()
    seen: set[str] = set()
    for raw in paths:
        fs, root = fsspec.core.url_to_fs(raw)
        name = protocol(fs)
        local = name in ("file", "local")
        prefix = "" if local else f"{name}://"
        if not fs.exists(root):
            raise AnalysisError(f"{raw}: no such file or folder")
        if fs.isfile(root):
            parquet, records = [root], []
        else:
            base = root.rstrip("/")
            listed = sorted(fs.find(base))
            parquet, records = [], []
            for f in listed:
                *parents, name = f[len(base):].strip("/").split("/")
                if any(part.startswith((".", "_")) for part in parents):
                    continue
                if name == SELECTION_RECORD:
                    records.append(f)
                elif name.endswith(".parquet") and not name.startswith((".", "_")):
                    parquet.append(f)
        if not parquet and not records:
            raise AnalysisError(f"{raw}: no Parquet files found")
        for kind, files in ((found.parquet, parquet), (found.records, records)):
            for f in files:
                identity = os.path.realpath(f) if local else prefix + f
                if identity not in seen:
                    seen.add(identity)
                    kind.append(prefix + f)
    return found


def find_parquet(paths: Sequence[str]) -> list[str]:
    """Parquet files under each path (see :func:`find_results`), each file once."""
    return find_results(paths).parquet


THREADS = 16
"""Files read at once from an object store (requests overlap; each file is one GET)."""


def _check(path: str, schema: pa.Schema, many: bool) -> pa.Schema:
    names = set(schema.names)
    missing = REQUIRED - names
    if missing:
        raise AnalysisError(f"{path}: not an rscert result file (missing columns {sorted(missing)})")
    if many and not (IDENTITY & names):
        raise AnalysisError(f"{path}: has no grouping columns ({', '.join(sorted(IDENTITY))}), so its "
                            "configuration cannot be told from the other files'; analyse it alone")
    return schema.remove_metadata()


def _unify(schemas: Sequence[pa.Schema]) -> pa.Schema:
    try:
        return pa.unify_schemas(list(schemas), promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise AnalysisError(f"result files disagree on column types: {exc}") from None


def read_schemas(files: Sequence[str]) -> pa.Schema:
    """Check every file carries rscert's result columns (naming the first that does not) and return
    the union of their schemas (footers read in parallel). Files without any identifying column cannot
    be told apart, so they are refused when mixed with others."""

    def one(path: str) -> pa.Schema:
        try:
            with fsspec.open(path, "rb") as fh:
                return pq.read_schema(fh)
        except Exception as exc:
            raise AnalysisError(f"{path}: not a readable Parquet file ({exc})") from None

    with ThreadPoolExecutor(THREADS) as pool:
        schemas = list(pool.map(one, files))
    return _unify([_check(path, schema, len(files) > 1) for path, schema in zip(files, schemas, strict=True)])


def _read_remote(files: Sequence[str]) -> pa.Table:
    """Object-store result files, each fetched whole by one GET (in parallel) and read from memory: the
    rows of every file, with ``_file``, as one table of the union schema."""

    def one(path: str) -> pa.Table:
        try:
            data = fsspec.core.url_to_fs(path)[0].cat_file(path)
            table = pq.read_table(pa.BufferReader(data))
        except Exception as exc:
            raise AnalysisError(f"{path}: not a readable Parquet file ({exc})") from None
        _check(path, table.schema, len(files) > 1)
        return table.replace_schema_metadata(None).append_column("_file", pa.array([path] * table.num_rows,
                                                                                    pa.string()))

    with ThreadPoolExecutor(THREADS) as pool:
        tables = list(pool.map(one, files))
    schema = _unify([t.schema for t in tables])
    try:
        return pa.concat_tables([t for t in tables], promote_options="permissive").cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise AnalysisError(f"result files disagree on column types: {exc}") from None


def scan(paths: Sequence[str], columns: Sequence[str], files: Sequence[str] | None = None) -> pl.LazyFrame:
    """All result rows under the paths (or in ``files``, when given), lazily, with each of ``columns``
    present (null where a file lacks it) and ``_file``, the file each row comes from. No file at all
    (only selection records were found): an empty frame of rscert's schema. Local files are scanned
    lazily by Polars; object-store files are fetched once each (one GET per file, in parallel)."""
    files = find_parquet(paths) if files is None else list(files)
    if not files:
        empty = pl.from_arrow(SCHEMA.empty_table()).with_columns(pl.lit(None, dtype=pl.String).alias("_file"))
        add = [pl.lit(None).alias(c) for c in columns if c not in empty.columns]
        return empty.lazy().with_columns(add) if add else empty.lazy()
    if any("://" in f and not f.startswith(("file://", "local://")) for f in files):
        frame = pl.from_arrow(_read_remote(files)).lazy()
        schema = frame.collect_schema()
    else:
        schema = pl.from_arrow(read_schemas(files).empty_table()).schema
        frame = pl.scan_parquet(files, schema=dict(schema), missing_columns="insert", include_file_paths="_file")
    add = [pl.lit(None).alias(c) for c in columns if c not in schema]
    return frame.with_columns(add) if add else frame


def setting_defaults(noise: str | None, norm: str | None, bound: str | None, vote: str | None) -> dict[str, str]:
    """The noise, norm, bound and vote of rows (or selection records) written before the columns
    existed: rscert's Gaussian, its family's default norm (l2 for the Gaussian), pA bound, hard votes."""
    noise = noise or NOISE
    default_norm = FAMILIES[noise].default_norm if noise in FAMILIES else "l2"
    return {"noise": noise, "norm": norm or default_norm, "bound": bound or BOUNDS[0], "vote": vote or VOTES[0]}


def fill_settings(frame: pl.LazyFrame) -> pl.LazyFrame:
    """:func:`setting_defaults` on every row whose columns are null."""
    noise = pl.col("noise").fill_null(NOISE)
    defaults = {name: fam.default_norm for name, fam in FAMILIES.items()}
    return frame.with_columns(
        noise.alias("noise"),
        pl.col("norm").fill_null(noise.replace_strict(defaults, default="l2", return_dtype=pl.String)),
        pl.col("bound").fill_null(pl.lit(BOUNDS[0])), pl.col("vote").fill_null(pl.lit(VOTES[0])))
