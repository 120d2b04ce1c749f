"""The run's selection, recorded in its output folder so that the analysis can count inputs without a row.

A unit that fails as a whole (an unexpected exception, a shard damaged after planning, actors that
never started) leaves no row for its inputs. The closing summary of the job knows the selection and
counts them as failed; ``rscert analyze`` only sees rows. So the driver records, in
``OUT/_rscert_selection.json`` (beside ``units/``; a name starting with ``_``, so no Parquet glob picks
it up), the dataset indices it selected::

    {"format": "rscert-selection/v1", "run_id": ..., "fingerprint": ..., "selected": 500,
     "indices": [[0, 50000, 100]], "selection": {"skip": 100, ..., "subset": null, "subset_seed": null},
     "unplanned_shards": [...], "earlier": [[50000, 50100, 1]], "columns": {...}, "written": "2025-...Z"}

With ``--subset`` (:mod:`rscert.data.subset`), ``selection`` names its size and seed and ``candidates``
says how many inputs (those ``--skip/--start/--end`` select) it was drawn from; ``indices`` are the
drawn ones, so the analysis counts exactly the subset.

``indices`` are ``[start, stop, step]`` triples in Python's ``range`` sense (maximal arithmetic runs,
so ``--skip 100`` over ImageNet is one triple). ``columns`` are the configuration columns the rows of
this run carry; the analysis uses them only for a run that has no row at all. ``earlier`` (ranges, absent
in records written before it existed) are the indices that earlier submissions into the folder selected
and this one does not: a narrower resubmission, so that the closing summary and the analysis can say how
many inputs it left out (``deselected``).

The record is written in ``prepare`` while the driver holds the folder's lease, whole or nothing, and
each submission replaces it with its own selection. The analysis counts as inputs of the run the
*union* of the recorded selection and the indices that have a row, so a later submission with a
smaller selection never takes committed rows out of a denominator (only inputs that were selected
before, never committed and are no longer selected leave it). No torch, no Ray.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable

import numpy as np

SELECTION_RECORD = "_rscert_selection.json"
FORMAT = "rscert-selection/v1"


class RecordError(ValueError):
    """A selection record that cannot be read or does not add up."""


def _as_array(indices: Iterable[int] | np.ndarray) -> np.ndarray:
    return indices if isinstance(indices, np.ndarray) else np.fromiter(indices, dtype=np.int64)


def to_ranges(indices: Iterable[int] | np.ndarray) -> list[list[int]]:
    """Sorted distinct ``indices`` as maximal arithmetic runs ``[start, stop, step]`` (range semantics;
    a lone index is ``[i, i + 1, 1]``), taken greedily from the first index: a run takes the step to
    the next index and every following index at that step. One Python step per run, not per index."""
    values = _as_array(indices).astype(np.int64, copy=False)
    if len(values) > 1 and not bool(np.all(values[1:] > values[:-1])):  # a selection is sorted already
        values = np.unique(values)
    count = len(values)
    diffs = np.diff(values)
    ends = np.append(np.flatnonzero(diffs[1:] != diffs[:-1]), count - 2)  # last index of each equal-diff stretch
    runs: list[list[int]] = []
    i = 0
    while i < count:
        if i + 1 == count:
            runs.append([int(values[i]), int(values[i]) + 1, 1])
            break
        step = int(diffs[i])
        j = int(ends[np.searchsorted(ends, i)]) + 1  # the stretch of diffs equal to step from i ends at j - 1
        runs.append([int(values[i]), int(values[j]) + step, step])
        i = j + 1
    return runs


def from_ranges(ranges: Iterable[Iterable[int]]) -> np.ndarray:
    """The indices of ``[start, stop, step]`` triples, as int64 (in order, as written)."""
    parts = [np.arange(*(int(v) for v in r), dtype=np.int64) for r in ranges]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def make_record(run_id: str, fingerprint: str, indices: Iterable[int], selection: dict, unplanned: list[str],
                columns: dict, earlier: Iterable[int] = (), candidates: int | None = None) -> dict:
    """The record (see the module's docstring); ``candidates``: with a subset, how many inputs it was
    drawn from (the key is absent otherwise)."""
    ranges = to_ranges(indices)
    record = {"format": FORMAT, "run_id": run_id, "fingerprint": fingerprint,
              "selected": int(sum(len(range(*r)) for r in ranges)), "indices": ranges, "selection": selection,
              "unplanned_shards": sorted(unplanned), "earlier": to_ranges(earlier), "columns": columns,
              "written": dt.datetime.now(dt.UTC).isoformat()}
    if candidates is not None:
        record["candidates"] = int(candidates)
    return record


def no_longer_selected(previous: dict | None, fingerprint: str, selected: Iterable[int] | np.ndarray) -> np.ndarray:
    """The indices (int64, ascending) an earlier submission into the folder (``previous``: its record, or
    None) selected that ``selected`` (this submission's) does not: the earlier record's selection and
    its own ``earlier``, less the new selection. Nothing for a record of another run."""
    none = np.zeros(0, dtype=np.int64)
    if not previous or previous.get("fingerprint") != fingerprint:
        return none
    try:
        before = np.union1d(from_ranges(previous.get("indices") or []), from_ranges(previous.get("earlier") or []))
    except (ValueError, TypeError):
        return none
    return np.setdiff1d(before, _as_array(selected)).astype(np.int64, copy=False)


def parse_record(path: str, data: bytes) -> tuple[dict, np.ndarray]:
    """The record and its selected indices; :class:`RecordError` naming the file if it does not add up."""
    try:
        record = json.loads(data)
        indices = from_ranges(record["indices"])
        run_id, selected = record["run_id"], int(record["selected"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RecordError(f"{path}: not a readable selection record ({type(exc).__name__}: {exc})") from None
    if not isinstance(run_id, str) or len(indices) != selected or len(np.unique(indices)) != selected:
        raise RecordError(f"{path}: damaged selection record: 'selected' is {selected} but 'indices' hold "
                          f"{len(indices)} ({len(np.unique(indices))} distinct) for run_id {run_id!r}")
    return record, indices
