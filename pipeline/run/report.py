"""A job's closing summary: counts and certified accuracy over what committed, and advice for each failure."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from rscert.analysis.result import FALLBACK_TABLE_RADII, table_radii
from rscert.data.shard_identity import CHANGED
from rscert.run.prepare import Job
from rscert.store.results import SCHEMA, UNITS_DIR, Store


def summarize(store: Store, radii: tuple[float, ...] = FALLBACK_TABLE_RADII, units: Iterable[str] | None = None,
              selected: int | Collection[int] | None = None) -> dict:
    """Counts, accuracy and certified accuracy over committed units (read through the store's
    filesystem, so any fsspec URL works; pyarrow and numpy suffice, the analysis proper is
    ``rscert analyze``).

    ``units`` limits the files read to those unit ids (default: every unit file). ``selected`` (dataset
    indices, or just their count) makes every selected input part of the denominator, and the indices
    also limit the rows to those inputs: an input without a row counts as failed; a failed row is
    not certified. ``certified_accuracy[r]``
    is the fraction of ``inputs`` with ``correct`` and ``radius >= r``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    if units is None:
        files = store.fs.glob(store.path(UNITS_DIR, "*.parquet"))
    else:
        files = [store.unit_path(u) for u in sorted(units)]
    columns = ["index", "status", "prediction", "correct", "radius"]
    if files:
        table = pads.dataset(files, filesystem=store.fs, format="parquet").to_table(columns=columns)
    else:
        table = SCHEMA.empty_table().select(columns)
    if selected is not None and not isinstance(selected, int):
        table = table.filter(pc.is_in(table["index"], value_set=pa.array(sorted(selected), pa.int64())))
    rows = table.num_rows
    ok = pc.equal(table["status"], "ok").to_numpy(zero_copy_only=False)
    correct = pc.fill_null(table["correct"], False).to_numpy(zero_copy_only=False) & ok
    radius = pc.fill_null(table["radius"], -1.0).to_numpy(zero_copy_only=False)
    abstained = pc.fill_null(pc.equal(table["prediction"], -1), False).to_numpy(zero_copy_only=False) & ok
    count = selected if isinstance(selected, int) else None if selected is None else len(selected)
    inputs = rows if count is None else max(count, rows)
    good = int(ok.sum())
    out = {"rows": rows, "ok": good, "errors": rows - good, "inputs": inputs,
           "abstained": int(abstained.sum()), "correct": int(correct.sum())}
    out["failed"] = out["errors"] + (inputs - rows)  # failed rows + inputs without a row
    out["accuracy"] = out["correct"] / inputs if inputs else 0.0
    out["certified_accuracy"] = {r: (int((correct & (radius >= r)).sum()) / inputs if inputs else 0.0)
                                 for r in radii}
    return out


def report(job: Job, log: Callable[[str], None] = print) -> int:
    """Print where the results are and a short summary; the exit code (1 if anything failed).

    Rates are over every selected input (failed ones included, as not certified)."""
    committed = job.store.committed_units(job.run["fingerprint"])
    s = summarize(job.store, table_radii([job.run["dataset"]]), units=committed, selected=job.plan.selected_indices)
    log(f"results: {job.config.out} ({len(committed)} units committed)")
    if s["inputs"]:
        missing = s["inputs"] - s["rows"]
        done = "predicted" if job.config.mode == "predict" else "certified"
        log(f"inputs: {s['inputs']} selected, {s['ok']} {done}, {s['failed']} failed "
            f"({s['errors']} failed rows, {missing} in units not committed); "
            f"abstain rate {s['abstained'] / s['inputs']:.3f}")
        if job.config.mode == "predict":
            log(f"accuracy of the smoothed classifier g (abstentions count as wrong): {s['accuracy']:.3f}")
        else:
            acc = "  ".join(f"r={r:g}: {v:.3f}" for r, v in s["certified_accuracy"].items())
            log(f"certified accuracy (of all {s['inputs']} selected inputs)  {acc}")
    dropped, without_row = job.deselected
    if dropped:
        log(f"note: {dropped} inputs selected by earlier submissions are not selected now and are not in these "
            f"counts; {without_row} of them have no row, so no count of this folder includes them (rscert analyze "
            "counts the rest, whose rows stay); select them again to certify them")
    if job.failed:
        log(f"FAILED ({len(job.failed)}); the {len(committed)} committed units are kept:")
        for name, reason in job.failed.items():
            log(f"  {failure_advice(name, reason)}")
        log("Then rerun the same command: only the units that are not committed run.")
        return 1
    return 0


def failure_advice(name: str, reason: str) -> str:
    """One line per failure: what is wrong, said once, and what to do about it."""
    if name.startswith("shard "):
        url = name.removeprefix("shard ")
        detail = reason.removeprefix(f"shard {url}: ")
        if detail.startswith(CHANGED.split("{")[0]):
            return (f"shard {url}: {detail}; its committed rows describe the content it was planned from: restore "
                    "that content, or certify into a new --out")
        if "no such file" in detail:
            return f"shard {url}: no such file; restore it or fix --data"
        return f"shard {url}: {detail}; repair or replace the file"
    if name == "deferred":
        return f"{reason}; they run once it reads"
    return f"unit {name}: {reason}; a rerun retries it"
