"""Reading result files for the analysis: find them, check them, scan them lazily (no torch, no Ray).

A file or folder reached twice (the same path given twice, a folder and a file inside it, a path and
a symlink to it) is read once: files are identified by their resolved path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import fsspec
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

REQUIRED = {"radius", "correct", "prediction", "status", "sigma"}
IDENTITY = {"model", "dataset", "run_id", "source"}


class AnalysisError(ValueError):
    """Input that cannot be analysed, naming the file (and line, for logs) or the setting."""


def find_parquet(paths: Sequence[str]) -> list[str]:
    """Parquet files under each path (a file, a folder searched recursively, or an fsspec URL), each
    file once however often it is reached. Names starting with ``.`` or ``_`` are skipped below a folder."""
    files: list[str] = []
    seen: set[str] = set()
    for raw in paths:
        fs, root = fsspec.core.url_to_fs(raw)
        protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
        local = protocol in ("file", "local")
        prefix = "" if local else f"{protocol}://"
        if not fs.exists(root):
            raise AnalysisError(f"{raw}: no such file or folder")
        if fs.isfile(root):
            found = [root]
        else:
            found = sorted(f for f in fs.glob(f"{root.rstrip('/')}/**/*.parquet")
                           if not any(part.startswith((".", "_")) for part in f[len(root):].split("/")))
        if not found:
            raise AnalysisError(f"{raw}: no Parquet files found")
        for f in found:
            identity = os.path.realpath(f) if local else prefix + f
            if identity not in seen:
                seen.add(identity)
                files.append(prefix + f)
    return files


def read_schemas(files: Sequence[str]) -> pa.Schema:
    """Check every file carries rscert's result columns (naming the first that does not) and return
    the union of their schemas. Files without any identifying column cannot be told apart, so they are
    refused when mixed with others."""
    schemas = []
    for path in files:
        try:
            with fsspec.open(path, "rb") as fh:
                schema = pq.read_schema(fh)
        except Exception as exc:
            raise AnalysisError(f"{path}: not a readable Parquet file ({exc})") from None
        names = set(schema.names)
        missing = REQUIRED - names
        if missing:
            raise AnalysisError(f"{path}: not an rscert result file (missing columns {sorted(missing)})")
        if len(files) > 1 and not (IDENTITY & names):
            raise AnalysisError(f"{path}: has no grouping columns ({', '.join(sorted(IDENTITY))}), so its "
                                "configuration cannot be told from the other files'; analyse it alone")
        schemas.append(schema.remove_metadata())
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise AnalysisError(f"result files disagree on column types: {exc}") from None


def scan(paths: Sequence[str], columns: Sequence[str]) -> pl.LazyFrame:
    """All result rows under the paths, lazily, with each of ``columns`` present (null where a file
    lacks it) and ``_file``, the file each row comes from."""
    files = find_parquet(paths)
    schema = pl.from_arrow(read_schemas(files).empty_table()).schema
    frame = pl.scan_parquet(files, schema=dict(schema), missing_columns="insert", include_file_paths="_file")
    add = [pl.lit(None).alias(c) for c in columns if c not in schema]
    return frame.with_columns(add) if add else frame
