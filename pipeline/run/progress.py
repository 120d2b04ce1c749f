"""Progress of a job on stderr: a live tqdm bar in a terminal, periodic whole lines elsewhere.

In ``ray job logs``, CI logs or a file, a carriage-return bar is unreadable; there the same facts
(inputs done, units, samples/s, ETA) are printed as one whole line every ``interval`` seconds
(``RSCERT_PROGRESS_INTERVAL``, default 30) and once at the end (unless the last periodic line already
said it). Per-unit lines go through :meth:`Progress.write` in both cases; executors write a unit's
line before counting its inputs, so a progress line never counts a unit not yet reported.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from typing import TextIO

from tqdm import tqdm


def _interval() -> float:
    try:
        return float(os.environ.get("RSCERT_PROGRESS_INTERVAL", "30"))
    except ValueError:
        return 30.0


class Progress:
    """``update``/``set_postfix``/``write`` like tqdm; a context manager."""

    def __init__(self, total: int, desc: str, unit: str = "input", file: TextIO | None = None,
                 interval: float | None = None) -> None:
        self.file = file or sys.stderr
        self.total, self.desc, self.unit = total, desc, unit
        self.interval = _interval() if interval is None else interval
        self.tty = bool(getattr(self.file, "isatty", lambda: False)())
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.file) if self.tty else None
        self.done, self.postfix = 0, {}
        self.start = self.last = time.perf_counter()
        self.shown: int | None = None  # the count of the last whole line printed

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_total(self, n: int) -> None:
        """More inputs to go (planning goes on while units run)."""
        if n:
            self.total += n
            if self.bar is not None:
                self.bar.total = self.total
                self.bar.refresh()

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif time.perf_counter() - self.last >= self.interval:
            self._line()

    def set_postfix(self, **values: object) -> None:
        self.postfix = values
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=self.file)
        else:
            print(message, file=self.file, flush=True)

    def _line(self) -> None:
        self.last = time.perf_counter()
        self.shown = self.done
        elapsed = self.last - self.start
        pct = 100.0 * self.done / self.total if self.total else 100.0
        parts = [f"{self.desc}: {self.done}/{self.total} {self.unit}s ({pct:.0f}%)"]
        parts += [f"{k.replace('_', ' ')} {v}" for k, v in self.postfix.items()]
        parts.append(f"elapsed {dt.timedelta(seconds=round(elapsed))}")
        if 0 < self.done < self.total:
            eta = elapsed / self.done * (self.total - self.done)
            parts.append(f"ETA {dt.timedelta(seconds=round(eta))}")
        print(", ".join(parts), file=self.file, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif not self.tty and self.last is not None:
            if self.shown != self.done:  # the last periodic line may already say it
                self._line()
            self.last = None  # closed: no second final line
