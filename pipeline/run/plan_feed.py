"""Planning in the background: units of indexed shards start while later shards are still being indexed
(no Ray here).

A thread runs the planning pass (:func:`rscert.data.indexing.index_shards`: index files, sidecars, or
scans, 16 shards at a time, each saved as it is done) and hands each shard's index to a
:class:`rscert.data.plan.Planner`, which cuts a shard's units as soon as every shard before it is
known (a shard's dataset indices start where the previous shards end) and its placement is consistent
with the folder's layout record, which is written before its units are released
(:mod:`rscert.data.layout`). Executors take the new units
as they come (:meth:`PlanFeed.take`). When every shard is known, ``on_done`` receives the whole plan
(the job records its selection and reports failed shards then). With ``--subset`` the planner cuts no
unit before every shard is known (the draw needs every candidate, :mod:`rscert.data.subset`): the
units then come all at once.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rscert.data.indexing import index_shards
from rscert.data.layout import LAYOUT, Layout
from rscert.data.plan import Plan, Planner, Selection, Unit
from rscert.store.results import Store

LAYOUT_SECONDS = 5.0
"""The layout record (rewritten whole) is written at most this often while executors have units to run;
an executor that runs out gets the held units at once (and the record written first)."""


class PlanFeed:
    """Units as planning produces them; :attr:`plan` once it is finished."""

    def __init__(self, store: Store, shards: Sequence[str], selection: Selection, unit_size: int,
                 committed: np.ndarray, log: Callable[[str], None], storage_options: dict[str, Any] | None,
                 on_done: Callable[[Plan], None]) -> None:
        self.planner = Planner(shards, selection, unit_size, committed, Layout.from_json(store.read_json(LAYOUT)))
        self.plan: Plan | None = None
        self.error: BaseException | None = None
        self.finished = False
        self._new: list[Unit] = []
        self._held: list[Unit] = []  # cut, their shards' placements not written yet
        self._written = -math.inf  # when the layout record was last written
        self._cond = threading.Condition()
        self._args = (store, shards, log, storage_options)
        self._on_done = on_done
        self._thread = threading.Thread(target=self._run, name="rscert-planning", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        store, shards, log, options = self._args
        try:
            for url, entry, changed in index_shards(store, shards, log, options):
                with self._cond:  # the layout is read by take() in executors' threads
                    self._held += self.planner.add(url, entry, changed)
                    if self._held and time.monotonic() - self._written >= LAYOUT_SECONDS:
                        self._release()
                    self._cond.notify_all()
            with self._cond:
                self.plan = self.planner.close()
                self._release()
            self._on_done(self.plan)
        except BaseException as exc:  # noqa: BLE001 -- handed to the executor's thread by take()/wait()
            self.error = exc
        finally:
            with self._cond:
                self.finished = True
                self._cond.notify_all()

    def _release(self) -> None:
        """Hand the held units out, once the layout record says where their shards are (the caller holds
        the lock): no row is committed at an index the record does not explain (rscert.data.layout)."""
        layout = self.planner.layout
        if layout.dirty:
            self._args[0].write_json(LAYOUT, layout.to_json())
            layout.dirty = False
            self._written = time.monotonic()
        self._new += self._held
        self._held = []

    def take(self, timeout: float = 0.0, hungry: bool = True) -> list[Unit]:
        """The units planned since the last call (waiting up to ``timeout`` seconds for some, or for the
        end of planning). ``hungry``: the caller has nothing left to run, so units held for the next
        layout write are released now (the record written first); a caller with a queue passes False
        and gets them with the next periodic write. An error of the planning pass is raised here, once
        its units are taken."""
        with self._cond:
            if not self._new and not self._held and not self.finished and timeout > 0:
                self._cond.wait(timeout)
            if hungry and not self._new and self._held:
                self._release()
            new, self._new = self._new, []
            done = self.finished
        if not new and done and self.error is not None:
            error, self.error = self.error, None
            raise error
        return new

    def wait_first(self) -> None:
        """Block until some unit is planned or planning is over."""
        with self._cond:
            while not self._new and not self._held and not self.finished:
                self._cond.wait(1.0)

    def wait_some(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for new units (returns at once if planning is over)."""
        with self._cond:
            if not self._new and not self._held and not self.finished:
                self._cond.wait(timeout)

    def wait(self) -> Plan:
        """Block until planning is over; the plan (or the planning pass's error)."""
        self._thread.join()
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        assert self.plan is not None
        return self.plan

    @property
    def exhausted(self) -> bool:
        """Planning is over and every unit has been taken."""
        with self._cond:
            return self.finished and not self._new and not self._held

    def rest(self) -> list[Unit]:
        """Every unit not taken yet, once planning is over."""
        self._thread.join()
        return self.take()
