"""Selected inputs without a row: counted as failed in their run's configuration (no torch, no Ray).

A native rscert output folder records its run's selection (:mod:`rscert.store.selection_record`). An input
of that selection with no row (its unit failed as a whole, or never ran) is part of every denominator
of the run's configuration as an input that is neither certified nor correct: it adds to ``inputs``,
``failed`` and ``missing`` and to nothing else. Per configuration, the inputs are the union of the
recorded selections of its runs and the indices that have a row, each counted once: a run's later
submission with a smaller selection, or another run pooled with it (``--pool-seeds``) that holds a
row for the input, never makes an input count twice or vanish.

Folders without a record (imported logs, older outputs, single files) are read as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import fsspec
import polars as pl

from rscert.analysis.result import AnalysisError
from rscert.analysis.result_files import setting_defaults
from rscert.store.selection_record import RecordError, parse_record


def read_selections(records: Sequence[str]) -> tuple[pl.DataFrame, dict[str, dict]]:
    """``(run_id, index)`` of every recorded selection (a run recorded twice, e.g. a folder copied,
    gives the union) and each run's ``columns`` (its configuration, as its rows carry it)."""
    frames, columns = [], {}
    for path in records:
        try:
            with fsspec.open(path, "rb") as fh:
                record, indices = parse_record(path, fh.read())
        except RecordError as exc:
            raise AnalysisError(str(exc)) from None
        except OSError as exc:
            raise AnalysisError(f"{path}: cannot read the selection record ({exc})") from None
        run = record["run_id"]
        columns.setdefault(run, record.get("columns") or {})
        frames.append(pl.DataFrame({"index": indices}, schema={"index": pl.Int64})
                      .select(pl.lit(run, dtype=pl.String).alias("run_id"), "index"))
    selected = pl.concat(frames).unique() if frames else pl.DataFrame(schema={"run_id": pl.String, "index": pl.Int64})
    return selected, columns


def missing_parts(frame: pl.LazyFrame, parts: pl.DataFrame, records: Sequence[str], keys: list[str],
                  key_columns: list[str], alpha: float | None = None) -> pl.DataFrame:
    """Partial sums (in the layout of ``parts``) for the recorded inputs that have no row: one part per
    run, with ``inputs`` = ``missing`` = their count and every other sum 0. ``keys`` are the grouping
    columns of a configuration (``key_columns`` less run and seed when pooling); ``alpha``, the
    re-bounding alpha, replaces the recorded one of a run without rows, as it does in rows."""
    if not records:
        return parts.clear()
    selected, columns = read_selections(records)
    runs = selected["run_id"].unique().to_list()
    # each run's configuration: that of most of its rows, or its record's when it has none
    with_rows = (parts.filter(pl.col("run_id").is_in(runs)).group_by(key_columns).agg(pl.col("inputs").sum())
                 .sort(["run_id", "inputs"], descending=[False, True]).unique("run_id", keep="first")
                 .drop("inputs"))
    schema = {c: parts.schema[c] for c in key_columns}
    rebound = {} if alpha is None else {"alpha": alpha}
    without = [{c: columns[r].get(c) for c in key_columns} | {"run_id": r} | rebound
               | setting_defaults(*(columns[r].get(c) for c in ("noise", "norm", "bound", "vote")))
               for r in runs if r not in set(with_rows["run_id"].to_list())]
    run_keys = pl.concat([with_rows, pl.DataFrame(without, schema=schema, strict=False)], how="vertical_relaxed")
    wanted = selected.join(run_keys, on="run_id", how="inner")
    configs = wanted.select(keys).unique()
    covered = (frame.select([*keys, "index"]).join(configs.lazy(), on=keys, how="semi", nulls_equal=True)
               .unique().collect(engine="streaming"))
    missing = (wanted.join(covered, on=[*keys, "index"], how="anti", nulls_equal=True)
               .sort("run_id").unique([*keys, "index"], keep="first")  # once per configuration
               .group_by(key_columns).agg(pl.len().cast(pl.Int64).alias("missing")))
    if missing.height == 0:
        return parts.clear()
    fill = {c: pl.lit(0) for c in parts.columns if c not in key_columns}
    fill |= {c: pl.lit(None) for c in ("max_radius", "_lo", "_hi")}
    fill |= {"_file": pl.lit("(selection record)"), "inputs": pl.col("missing")}
    synthetic = missing.with_columns(**{c: v for c, v in fill.items() if c != "missing"})
    return synthetic.select([pl.col(c).cast(parts.schema[c]) for c in parts.columns])
