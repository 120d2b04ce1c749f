"""A job's closing summary: counts and certified accuracy over what committed, and advice for each failure."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

import pyarrow as pa

from rscert.analysis.result import FALLBACK_TABLE_RADII, table_radii
from rscert.data.layout import MISPLACED
from rscert.data.shard_identity import CHANGED
from rscert.run.prepare import Job
from rscert.store.results import UNITS_DIR, Store
from rscert.store.tally import SUMMARY_COLUMNS, RowFacts, tally


def summarize(store: Store, radii: tuple[float, ...] = FALLBACK_TABLE_RADII, units: Iterable[str] | None = None,
              selected: int | Collection[int] | None = None) -> dict:
    """Counts, accuracy and certified accuracy over committed unit files (read through the store's
    filesystem, one file at a time, so any fsspec URL works and memory stays small; see
    :func:`rscert.store.tally.tally` for ``selected``). ``units`` limits the files read to those unit
    ids (default: every unit file). The analysis proper is ``rscert analyze``."""
    import pyarrow.parquet as pq

    paths = store.unit_files() if units is None else [store.unit_path(u) for u in sorted(units)]
    parts = []
    for path in paths:
        data = store.fs.cat_file(path)
        parts.append(RowFacts.from_table(pq.read_table(pa.BufferReader(data), columns=SUMMARY_COLUMNS)))
    return tally(RowFacts.concat(parts), radii, selected)


def job_summary(job: Job) -> dict:
    """The job's summary from what the driver already holds: the rows committed before (read once, when
    the job was prepared) and those its units committed (returned by the workers); no file is read."""
    facts = RowFacts.concat([job.done, *job.new])
    return tally(facts, table_radii([job.run["dataset"]]), job.plan.selected_indices)


def report(job: Job, log: Callable[[str], None] = print) -> int:
    """Print where the results are and a short summary; the exit code (1 if anything failed).

    Rates are over every selected input (failed ones included, as not certified)."""
    s = job_summary(job)
    committed = len(job.committed) + job.new_units
    log(f"results: {job.config.out} ({committed} units committed)")
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
        log(f"FAILED ({len(job.failed)}); the {committed} committed units are kept:")
        for name, reason in job.failed.items():
            log(f"  {failure_advice(name, reason)}")
        log("Then rerun the same command: only the units that are not committed run.")
        return 1
    if s["inputs"] and not s["ok"]:
        done = "predicted" if job.config.mode == "predict" else "certified"
        log(f"FAILED: nothing was {done}: every one of the {s['inputs']} selected inputs failed its row:")
        for status, (count, example) in failure_reasons(job.store).items():
            log(f"  {status}: {count} row{'s' if count != 1 else ''}" + (f" (e.g. {example})" if example else ""))
        log("A rerun gives the same rows: fix the inputs or the settings (e.g. --num-classes, --preset), and "
            "certify into a new --out.")
        return 1
    return 0


def failure_reasons(store: Store) -> dict[str, tuple[int, str | None]]:
    """Per status of the failed rows in the folder's unit files: their count and one row's message
    (read only when a job certified nothing, to say why)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    files = store.fs.glob(store.path(UNITS_DIR, "*.parquet"))
    if not files:
        return {}
    table = pads.dataset(files, filesystem=store.fs, format="parquet").to_table(columns=["status", "error"])
    failed = table.filter(pc.not_equal(table["status"], "ok"))
    out: dict[str, tuple[int, str | None]] = {}
    for status, error in zip(failed["status"].to_pylist(), failed["error"].to_pylist(), strict=True):
        count, example = out.get(status, (0, None))
        out[status] = (count + 1, example or error)
    return dict(sorted(out.items(), key=lambda kv: str(kv[0])))


def failure_advice(name: str, reason: str) -> str:
    """One line per failure: what is wrong, said once, and what to do about it."""
    if name.startswith("shard "):
        url = name.removeprefix("shard ")
        detail = reason.removeprefix(f"shard {url}: ")
        if detail.startswith(CHANGED.split("{")[0]):
            return (f"shard {url}: {detail}; its committed rows describe the content it was planned from: restore "
                    "that content, or certify into a new --out")
        if detail.startswith(MISPLACED.split("{")[0]):  # says what to do itself
            return f"shard {url}: {detail}"
        if "no such file" in detail:
            return f"shard {url}: no such file; restore it or fix --data"
        return f"shard {url}: {detail}; repair or replace the file"
    if name == "deferred":
        return f"{reason}; they run once it reads"
    return f"unit {name}: {reason}; a rerun retries it"
