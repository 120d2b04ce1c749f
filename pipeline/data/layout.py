"""Which shard content holds which dataset indices in an output folder's run (no torch, no Ray).

A row's dataset index is its sample's position in the concatenation of the job's shards, in the order
given (the published scripts' ``i``; ``--skip`` and ``--start/--end`` count in it). The shard list
itself is part of the *selection*, not of the configuration: a folder may be run on one shard first
and on all of them next, and the same file may be spelled as a relative path one day and an
absolute path (or another mount, or a copy) the next. What must not change is what each committed
index *means*. So the folder records, in ``OUT/_rscert_layout.json``, the dataset indices each shard's
content occupied when its units were planned::

    {"format": "rscert-layout/v1",
     "shards": [{"offset": 0, "count": 782, "sha256": "e3b0...", "url": "data/val-000000.tar"}, ...]}

``sha256`` is the shard's content hash from its identity record (:mod:`rscert.data.shard_identity`),
so the check is by content, not by spelling. A later submission places each shard at an offset (the
samples of the shards before it); the placement is **consistent** when the shard's content sits at
exactly recorded indices, or when no index it covers was recorded (a shard appended to the run, like
widening ``--end``): a committed index never changes meaning. Otherwise (indices recorded for another
content, or for this content at another offset: the list was reordered, a shard was dropped from its
middle, or a shard was replaced) the shard is refused like an unreadable one: it and the shards
after it run no unit (their indices would be another run's), the job fails naming it, and the shards
before it, whose indices are consistent, go on.

The record is written by the planning pass for the shards it has cut *before* their units are handed
to an executor, so no row is ever committed at an index the record does not explain. It is rewritten
whole, so the pass writes it at most every few seconds while executors have units to run (and at once
when one runs out: :mod:`rscert.run.plan_feed`), not once per shard. Entries are never removed: what a
committed row means is permanent.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

LAYOUT = "_rscert_layout.json"
FORMAT = "rscert-layout/v1"


@dataclass(frozen=True)
class Placement:
    """A shard's content at dataset indices ``offset .. offset + count - 1``."""

    offset: int
    count: int
    sha256: str
    url: str

    def to_json(self) -> dict:
        return {"offset": self.offset, "count": self.count, "sha256": self.sha256, "url": self.url}

    def overlaps(self, other: Placement) -> bool:
        """Whether the two share a dataset index (an empty shard holds none)."""
        return (self.count > 0 and other.count > 0 and self.offset < other.offset + other.count
                and other.offset < self.offset + self.count)

    def indices(self) -> str:
        return f"{self.offset}..{self.offset + self.count - 1}" if self.count else f"{self.offset} (no samples)"


class Layout:
    """The folder's recorded placements, and the ones this submission adds."""

    def __init__(self, recorded: Iterable[Placement] = ()) -> None:
        self.placements: list[Placement] = []
        self._exact: set[tuple[int, int, str]] = set()
        self._starts: list[int] = []  # the non-empty placements, by offset (disjoint), for bisection:
        self._spans: list[Placement] = []  # thousands of shards are placed in O(log n) each
        for placement in recorded:
            self._add(placement)
        self.dirty = False

    def _add(self, placement: Placement) -> None:
        self.placements.append(placement)
        self._exact.add((placement.offset, placement.count, placement.sha256))
        if placement.count:
            at = bisect.bisect_right(self._starts, placement.offset)
            self._starts.insert(at, placement.offset)
            self._spans.insert(at, placement)

    def _clash(self, placement: Placement) -> Placement | None:
        """A recorded placement sharing an index with ``placement`` (the last starting before its end:
        recorded spans are disjoint, so if that one ends before it starts, so do all before it)."""
        at = bisect.bisect_left(self._starts, placement.offset + placement.count)
        if placement.count and at and self._spans[at - 1].overlaps(placement):
            return self._spans[at - 1]
        return None

    @classmethod
    def from_json(cls, record: dict | None) -> Layout:
        """The layout of a record (None, or a record of another format: empty)."""
        if not record or record.get("format") != FORMAT:
            return cls()
        return cls(Placement(int(p["offset"]), int(p["count"]), str(p["sha256"]), str(p["url"]))
                   for p in record.get("shards") or [])

    def to_json(self) -> dict:
        return {"format": FORMAT, "shards": [p.to_json() for p in sorted(self.placements, key=lambda p: p.offset)]}

    def place(self, placement: Placement) -> str | None:
        """Record ``placement`` if it is consistent with the folder's; else why not (nothing recorded).

        Consistent: it is recorded already, or no recorded placement shares one of its indices. The
        invariant is that a committed index never changes meaning; the same content may also sit at
        further indices (a list that repeats a shard certifies its samples twice, as listed)."""
        if (placement.offset, placement.count, placement.sha256) in self._exact:
            return None  # recorded (under this spelling or another)
        clash = self._clash(placement)
        if clash is None:
            self._add(placement)
            self.dirty = True
            return None
        whose = "other content" if clash.sha256 != placement.sha256 else "the same content at other indices"
        reason = (f"in this shard list it would hold dataset indices {placement.indices()}, which this folder's rows "
                  f"give to {whose} ({clash.url}, indices {clash.indices()})")
        home = next((k for k in self.placements if k.sha256 == placement.sha256 and k.count == placement.count), None)
        if home is not None:
            reason += f"; its content held indices {home.indices()} (as {home.url})"
        return reason


MISPLACED = ("not where this folder's run had it: {reason}. Dataset indices count samples across the shards in the "
             "order given, so a folder's shards keep their order: give the shards of the earlier submission first, in "
             "the same order (new shards after them), or use another --out; this shard and the ones after it ran "
             "no unit")
"""A job's failure for a shard whose placement contradicts the folder's layout."""
