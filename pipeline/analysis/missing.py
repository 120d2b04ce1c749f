"""Selected inputs without a row: counted as failed in their run's configuration (no torch, no Ray).

A native rscert output folder records its run's selection (:mod:`rscert.store.selection_record`). An input
of that selection with no row (its unit failed as a whole, or never ran) is part of every denominator
of the run's configuration as an input that is neither certified nor correct: it adds to ``inputs``,
``failed`` and ``missing`` and to nothing else. Per configuration, the inputs are the union of the
recorded selections of its runs and the indices that have a row, each counted once: a run's later
submission with a smaller selection, or another run pooled with it (``--pool-seeds``) that holds a
row for the input, never makes an input count twice or vanish.

Inputs that an earlier submission into the folder selected and the latest no longer selects (a
narrower resubmission, ``earlier`` in the record) are in no denominator unless they have a row; those
without a row are counted per configuration as ``deselected``, so that the summary says how many a
narrower selection left out.

Folders without a record (imported logs, older outputs, single files) are read as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import fsspec
import polars as pl

from rscert.analysis.result import AnalysisError
from rscert.analysis.result_files import setting_defaults
from rscert.store.selection_record import RecordError, from_ranges, parse_record


def read_selections(records: Sequence[str]) -> tuple[pl.DataFrame, dict[str, dict], pl.DataFrame]:
    """``(run_id, index)`` of every recorded selection (a run recorded twice, e.g. a folder copied,
    gives the union), each run's ``columns`` (its configuration, as its rows carry it), and
    ``(run_id, index)`` of the inputs earlier submissions selected that the latest does not."""
    frames, columns, earlier = [], {}, []
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
        earlier.append(pl.DataFrame({"index": from_ranges(record.get("earlier") or [])}, schema={"index": pl.Int64})
                       .select(pl.lit(run, dtype=pl.String).alias("run_id"), "index"))
    empty = pl.DataFrame(schema={"run_id": pl.String, "index": pl.Int64})
    selected = pl.concat(frames).unique() if frames else empty
    before = pl.concat(earlier).unique().join(selected, on=["run_id", "index"], how="anti") if earlier else empty
    return selected, columns, before


def missing_parts(frame: pl.LazyFrame, parts: pl.DataFrame, records: Sequence[str], keys: list[str],
                  key_columns: list[str], alpha: float | None = None) -> pl.DataFrame:
    """Partial sums (in the layout of ``parts``) for the recorded inputs that have no row: one part per
    run, with ``inputs`` = ``missing`` = their count and every other sum 0. ``keys`` are the grouping
    columns of a configuration (``key_columns`` less run and seed when pooling); ``alpha``, the
    re-bounding alpha, replaces the recorded one of a run without rows, as it does in rows."""
    if not records:
        return parts.clear()
    selected, columns, earlier = read_selections(records)
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
    # earlier-selected inputs that neither have a row nor are selected by a run of the configuration now
    dropped = (earlier.join(run_keys, on="run_id", how="inner")
               .join(covered, on=[*keys, "index"], how="anti", nulls_equal=True)
               .join(wanted.select([*keys, "index"]), on=[*keys, "index"], how="anti", nulls_equal=True)
               .sort("run_id").unique([*keys, "index"], keep="first")
               .group_by(key_columns).agg(pl.len().cast(pl.Int64).alias("deselected")))
    synthetic = [_part(missing, parts, key_columns, "missing"), _part(dropped, parts, key_columns, "deselected")]
    return pl.concat([frame for frame in synthetic if frame.height] or [parts.clear()])


def _part(counts: pl.DataFrame, parts: pl.DataFrame, key_columns: list[str], column: str) -> pl.DataFrame:
    """Partial sums (layout of ``parts``) carrying only ``column``: ``missing`` inputs are inputs too
    (failed ones); ``deselected`` ones are in no denominator."""
    fill = {c: pl.lit(0) for c in parts.columns if c not in key_columns}
    fill |= {c: pl.lit(None) for c in ("max_radius", "_lo", "_hi")}
    fill |= {"_file": pl.lit("(selection record)"), column: pl.col(column)}
    if column == "missing":
        fill["inputs"] = pl.col("missing")
    synthetic = counts.with_columns(**{c: v for c, v in fill.items() if c != column})
    return synthetic.select([pl.col(c).cast(parts.schema[c]) for c in parts.columns])
