"""Plan work units over shards (no Ray, no model, no torch).

Selection follows the paper's scripts: the dataset index i runs over all samples of all shards in
order; an input is a candidate if ``start <= i < end`` and ``i % skip == 0``; at most ``max`` inputs
are kept (the first ones), or, with ``subset``, a seeded random ``subset`` of the candidates
(:mod:`rscert.data.subset`: a pure function of the subset seed and the index, nested in N).
Inputs already committed (under the same result fingerprint) are left out, and each shard's
remaining selected positions are cut into units of at most ``unit_size`` inputs: a run resumes input
by input and commits unit by unit, so a selection or unit size may change between runs into one
output and each input is still certified exactly once. A unit's id is a stable
function of its shard and its positions.
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
from array import array
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rscert.data.layout import MISPLACED, Layout, Placement
from rscert.data.shard_index import ShardIndex
from rscert.data.shards import shard_name
from rscert.data.subset import draw_subset


@dataclass(frozen=True)
class Selection:
    skip: int = 1
    start: int = 0
    end: int | None = None
    max: int | None = None
    subset: int | None = None  # keep this many candidates, drawn by rscert.data.subset
    subset_seed: int = 0

    def candidates(self, lo: int, hi: int) -> np.ndarray:
        """The candidates among the dataset indices ``lo <= i < hi`` (int64, ascending)."""
        first = max(lo, self.start)
        first += -first % self.skip
        stop = hi if self.end is None else min(hi, self.end)
        return np.arange(first, max(first, stop), self.skip, dtype=np.int64)


class Unit:
    """A work unit: some inputs of one shard, given by their positions and dataset indices, and, when
    the shard is indexed and seekable, the ranged reads that fetch them: ``(first position, byte offset,
    length)`` each (see :func:`span_reads`, :mod:`rscert.data.shard_index`). The reads do not enter
    the unit's id.

    Compact, since the driver holds every pending unit (160,000 at 5 million inputs in units of 32):
    positions and reads in typed arrays, the indices as one shift from the positions when they are
    that (as planned units' are), the keys as one string (their common prefix, then each one's rest);
    each is given back as the tuple it was made from."""

    __slots__ = ("_indices", "_keys", "_positions", "_reads", "identity", "shard", "unit_id")
    _SEP = "\x00"  # no tar member name holds a NUL

    def __init__(self, unit_id: str, shard: str, positions: Sequence[int], indices: Sequence[int],
                 keys: Sequence[str], reads: Sequence[Sequence[int]] | None = None, identity: dict | None = None
                 ) -> None:
        self.unit_id, self.shard, self.identity = unit_id, shard, identity  # identity: rscert.data.shard_identity
        self._positions = array("q", positions)
        shift = indices[0] - positions[0] if len(indices) and len(positions) else 0
        same = len(indices) == len(positions) and all(i - p == shift for i, p in zip(indices, positions, strict=True))
        self._indices: int | array = shift if same else array("q", indices)
        keys = tuple(keys)
        self._keys: str | tuple[str, ...] = keys
        if keys and not any(self._SEP in k for k in keys):  # their common prefix once, then each one's rest
            prefix = os.path.commonprefix(keys)
            self._keys = self._SEP.join([prefix, *(k[len(prefix):] for k in keys)])
        self._reads = None if reads is None else array("q", [int(v) for r in reads for v in r])

    @property
    def positions(self) -> tuple[int, ...]:
        return tuple(self._positions)

    @property
    def indices(self) -> tuple[int, ...]:
        shift = self._indices
        return tuple(p + shift for p in self._positions) if isinstance(shift, int) else tuple(shift)

    @property
    def keys(self) -> tuple[str, ...]:
        if isinstance(self._keys, tuple):
            return self._keys
        prefix, *rest = self._keys.split(self._SEP)
        return tuple(prefix + k for k in rest)

    @property
    def reads(self) -> tuple[tuple[int, int, int], ...] | None:
        r = self._reads
        return None if r is None else tuple((r[i], r[i + 1], r[i + 2]) for i in range(0, len(r), 3))

    def __len__(self) -> int:
        return len(self._positions)

    def _fields(self) -> tuple:
        return self.unit_id, self.shard, self.positions, self.indices, self.keys, self.reads, self.identity

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unit) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((self.unit_id, self.shard, self.positions))

    def __repr__(self) -> str:
        return (f"Unit(unit_id={self.unit_id!r}, shard={self.shard!r}, positions={self.positions}, "
                f"indices={self.indices}, keys={self.keys}, reads={self.reads}, identity={self.identity!r})")

    def to_json(self) -> dict:
        return {"unit_id": self.unit_id, "shard": self.shard, "positions": list(self.positions),
                "indices": list(self.indices), "keys": list(self.keys),
                "reads": None if self.reads is None else [list(r) for r in self.reads], "identity": self.identity}

    @classmethod
    def from_json(cls, d: dict) -> Unit:
        reads = d.get("reads")
        return cls(d["unit_id"], d["shard"], tuple(d["positions"]), tuple(d["indices"]), tuple(d["keys"]),
                   None if reads is None else tuple((int(p), int(o), int(n)) for p, o, n in reads), d.get("identity"))


GAP_BYTES = 64 * 1024
"""Inputs of a unit whose byte spans lie at most this far apart are fetched by one ranged read (the
bytes between cost less than another request)."""


def span_reads(positions: Sequence[int], offsets: Sequence[int], sizes: Sequence[int]
               ) -> tuple[tuple[int, int, int], ...]:
    """The ranged reads for some positions of an indexed shard (in order): ``(first position, offset,
    length)`` each; spans closer than :data:`GAP_BYTES` share a read (the samples between are parsed,
    not decoded)."""
    runs: list[list[int]] = []
    for position in sorted(positions):
        offset, size = offsets[position], sizes[position]
        if runs and 0 <= offset - (runs[-1][1] + runs[-1][2]) <= GAP_BYTES:
            runs[-1][2] = offset + size - runs[-1][1]
        else:
            runs.append([position, offset, size])
    return tuple((p, o, n) for p, o, n in runs)


def unit_id(shard: str, first_position: int, positions: Sequence[int] | None = None) -> str:
    """``<shard file stem>-<first position>-<8 hex of the shard URL and the positions>``: the same
    units get the same ids in every run; different units (another shard, another cut of the
    positions) get different ones."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", shard_name(shard)).removesuffix(".tar")[:60]
    cut = ",".join(str(p) for p in (positions if positions is not None else [first_position]))
    digest = hashlib.sha1(f"{shard}\n{cut}".encode()).hexdigest()[:8]
    return f"{stem}-{first_position:07d}-{digest}"


@dataclass
class Plan:
    units: list[Unit]  # the units to run: selected inputs not yet committed
    changed_shards: dict[str, str] = field(default_factory=dict)  # url -> how it changed (no unit runs)
    selected: int = 0  # selected inputs (in readable shards), committed or not
    done: int = 0  # of them, already committed
    selected_parts: list[np.ndarray] = field(default_factory=list)  # their dataset indices, shard by shard
    failed_shards: dict[str, str] = field(default_factory=dict)  # url -> reason
    deferred_shards: list[str] = field(default_factory=list)  # offsets unknown until a failed shard reads
    candidates: int | None = None  # with a subset: the inputs it was drawn from (skip/start/end's)

    @property
    def selected_indices(self) -> np.ndarray:
        """The selected dataset indices (int64, ascending)."""
        if len(self.selected_parts) > 1:  # joined once (5 million inputs: 40 MB a copy)
            self.selected_parts[:] = [np.concatenate(self.selected_parts)]
        return self.selected_parts[0] if self.selected_parts else np.zeros(0, dtype=np.int64)


class Planner:
    """Plans shard by shard, in shard order, as shards' indexes arrive in any order: the units of a shard
    can be cut once every shard before it is known (its dataset indices start where they end), so work
    can start while later shards are still being scanned. ``committed``: dataset indices already done.

    With a ``subset`` the draw needs every candidate, so no unit is cut before every shard is known;
    then the subset is drawn and every shard's units are cut at once. A shard that failed to index
    leaves the candidates unknown: then no unit runs (every shard is failed or deferred).

    ``layout``: the output folder's record of which content holds which dataset indices
    (:mod:`rscert.data.layout`); each shard is placed in it before its units are cut, and a shard placed
    inconsistently is refused like an unreadable one."""

    def __init__(self, shards: Sequence[str], selection: Selection, unit_size: int,
                 committed: Collection[int] | np.ndarray = (), layout: Layout | None = None) -> None:
        self.shards, self.selection, self.unit_size = list(shards), selection, unit_size
        self.layout = layout if layout is not None else Layout()
        done = committed if isinstance(committed, np.ndarray) else np.fromiter(committed, dtype=np.int64)
        self.committed = np.unique(done.astype(np.int64, copy=False))
        self.entries: dict[str, ShardIndex | list[str] | str] = {}
        self.changed: dict[str, str] = {}
        self.plan = Plan(units=[])
        self.next, self.offset, self.stopped = 0, 0, False
        self.uses = collections.Counter(self.shards)  # cuts each shard's index is still wanted for

    @property
    def finished(self) -> bool:
        return self.stopped or self.next == len(self.shards)

    def add(self, url: str, entry: ShardIndex | list[str] | str, changed: str | None = None) -> list[Unit]:
        """Record a shard's index (or the reason it failed); the units that can now be cut, in order.
        A ``changed`` shard (the reason; its recorded index still gives the indices) runs no unit: its
        selected inputs stay selected (in every denominator) and the shards after it run."""
        self.entries[url] = entry
        if changed is not None:
            self.changed[url] = changed
        if self.selection.subset is not None:
            return self._cut_subset() if len(self.entries) == len(self.uses) and not self.finished else []
        new: list[Unit] = []
        while not self.finished and self.shards[self.next] in self.entries:
            shard = self.shards[self.next]
            new += self._cut(shard)
            self.uses[shard] -= 1
            if not self.uses[shard]:  # its units hold what they need: the index goes
                del self.entries[shard]
            self.next += 1
        return new

    def _cut(self, url: str) -> list[Unit]:
        plan, selection, entry = self.plan, self.selection, self.entries[url]
        if isinstance(entry, str):  # later shards' indices are unknown: deferred (reported, not run)
            plan.failed_shards[url] = entry
            self.stopped = True
            return []
        misplaced = self._place(url, self.offset)
        if misplaced is not None:
            plan.failed_shards[url] = misplaced
            self.stopped = True
            return []
        picked = selection.candidates(self.offset, self.offset + len(_keys(entry)))
        if selection.max is not None:
            picked = picked[: max(0, selection.max - plan.selected)]
        return self._units(url, picked)

    def _cut_subset(self) -> list[Unit]:
        """Every shard is known: draw the subset from all candidates, then cut each shard's units."""
        plan, selection = self.plan, self.selection
        self.next = len(self.shards)
        failed = {u: e for u in self.shards if isinstance(e := self.entries[u], str)}
        if failed:  # the candidates of the shards after a failed one are unknown, so no draw is the run's
            plan.failed_shards.update(failed)
            plan.deferred_shards = [u for u in dict.fromkeys(self.shards) if u not in failed]
            return []
        bounds = np.cumsum([0] + [len(_keys(self.entries[u])) for u in self.shards])
        for url, lo in zip(self.shards, bounds[:-1], strict=False):
            misplaced = self._place(url, int(lo))
            if misplaced is not None:  # this shard's indices and the later ones' are another run's: none runs
                plan.failed_shards[url] = misplaced
                plan.deferred_shards = [u for u in dict.fromkeys(self.shards) if u != url]
                return []
        candidates = [selection.candidates(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        plan.candidates = sum(len(c) for c in candidates)
        chosen = draw_subset(np.concatenate(candidates), selection.subset, selection.subset_seed)
        units: list[Unit] = []
        for url, lo, hi in zip(self.shards, bounds[:-1], bounds[1:], strict=True):
            first, last = np.searchsorted(chosen, [lo, hi])
            units += self._units(url, chosen[first:last])
        return units

    def _place(self, url: str, offset: int) -> str | None:
        """Place the shard at dataset index ``offset`` in the folder's layout; why not, as its failure."""
        entry = self.entries[url]
        sha = entry.identity.get("sha256") if isinstance(entry, ShardIndex) and entry.identity else None
        if sha is None:  # folders written before identity records: keys only, nothing to place by
            return None
        reason = self.layout.place(Placement(offset, len(entry.keys), sha, url))
        return None if reason is None else MISPLACED.format(reason=reason)

    def _units(self, url: str, picked: np.ndarray) -> list[Unit]:
        """The units of shard ``url`` (whose first dataset index is ``self.offset``) over its selected
        dataset indices ``picked`` (ascending), less those committed; counts them in the plan."""
        plan, entry = self.plan, self.entries[url]
        keys = _keys(entry)
        ranged = isinstance(entry, ShardIndex) and entry.ranged
        plan.selected += len(picked)
        lo, hi = np.searchsorted(self.committed, [self.offset, self.offset + len(keys)])
        done = np.isin(picked, self.committed[lo:hi])
        plan.done += int(done.sum())
        if len(picked):
            plan.selected_parts.append(np.asarray(picked, dtype=np.int64))
        chosen = [] if url in self.changed else (picked[~done] - self.offset).tolist()
        if url in self.changed:
            plan.changed_shards[url] = self.changed[url]
        identity = entry.identity if isinstance(entry, ShardIndex) else None
        units = []
        for i in range(0, len(chosen), self.unit_size):
            part = chosen[i : i + self.unit_size]
            reads = span_reads(part, entry.offsets, entry.sizes) if ranged else None
            units.append(Unit(unit_id(url, part[0], part), url, tuple(part), tuple(self.offset + p for p in part),
                              tuple(keys[p] for p in part), reads, identity))
        plan.units += units
        self.offset += len(keys)
        return units

    def close(self) -> Plan:
        """The plan, once every shard is known: failed shards, and the readable ones after the first
        failure (deferred)."""
        plan = self.plan
        if self.stopped:
            later = self.shards[self.next :]  # the failed shard is shards[next - 1]
            plan.failed_shards.update({u: e for u in later if isinstance(e := self.entries.get(u), str)})
            plan.deferred_shards = [u for u in later if not isinstance(self.entries.get(u), str)]
        return plan


def _keys(entry: ShardIndex | list[str]) -> list[str]:
    return entry.keys if isinstance(entry, ShardIndex) else entry


def plan_units(
    shards: Sequence[str], shard_keys: dict[str, ShardIndex | list[str] | str], selection: Selection,
    unit_size: int, committed: Collection[int] | np.ndarray = (), changed: Mapping[str, str] | None = None,
) -> Plan:
    """Cut the selected inputs not in ``committed`` (dataset indices) into units. ``shard_keys[url]``
    is the shard's index (or just its key list), or the reason it could not be read. Indices of shards
    after an unreadable one are unknown, so those shards are deferred (reported, not run) until it
    reads. Units of an index that can be read by byte span carry their ranged reads. A shard in
    ``changed`` (url -> reason) runs no unit (see :meth:`Planner.add`)."""
    planner = Planner(shards, selection, unit_size, committed)
    for url in shards:
        planner.add(url, shard_keys[url], (changed or {}).get(url))
    return planner.close()
