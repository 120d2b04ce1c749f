"""The driver's queue of pending units, with shard affinity for streams, and the rule that hands them to
actors (:func:`dispatch`; no Ray here).

Units of a seekable shard go to whichever actor asks next. Units of a sequential shard (``pipe:``,
compressed tar; :func:`rscert.data.shards.sequential`) can only be read from the shard's first byte
on, so one actor takes all of a shard's units, in order, and reads them over one stream (the
worker's :class:`~rscert.data.shards.StreamCursor`): the shard is streamed once, not once per unit.
An actor that is lost gives its shards back (another actor then starts a new stream).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator, Mapping

from rscert.data.plan import Unit


class UnitQueue:
    """Pending units: FIFO, except that a sequential shard's units go to the actor that owns the shard."""

    def __init__(self, units: Iterable[Unit], sequential: Callable[[str], bool]) -> None:
        self.sequential = sequential
        self.free: collections.deque[Unit] = collections.deque()  # seekable shards' units
        self.streams: dict[str, collections.deque[Unit]] = {}  # sequential shard -> its units, in order
        self.owner: dict[str, int] = {}  # sequential shard -> actor reading it
        for unit in units:
            self.append(unit)

    def __len__(self) -> int:
        return len(self.free) + sum(len(q) for q in self.streams.values())

    def __bool__(self) -> bool:
        return len(self) > 0

    def __iter__(self) -> Iterator[Unit]:
        yield from self.free
        for queue in self.streams.values():
            yield from queue

    def append(self, unit: Unit) -> None:
        if self.sequential(unit.shard):
            self.streams.setdefault(unit.shard, collections.deque()).append(unit)
        else:
            self.free.append(unit)

    def appendleft(self, unit: Unit) -> None:
        """Put a unit back at the front (its actor was lost); a stream's units stay in position order."""
        if not self.sequential(unit.shard):
            self.free.appendleft(unit)
            return
        queue = self.streams.setdefault(unit.shard, collections.deque())
        queue.appendleft(unit)
        ordered = sorted(queue, key=lambda u: min(u.positions))
        queue.clear()
        queue.extend(ordered)

    def clear(self) -> None:
        self.free.clear()
        self.streams.clear()
        self.owner.clear()

    def release(self, actor: int) -> None:
        """The actor is gone: its shards may go to another."""
        self.owner = {shard: a for shard, a in self.owner.items() if a != actor}

    def open(self) -> int:
        """Units any actor may take: seekable shards' units and the units of streams nobody reads yet."""
        return len(self.free) + sum(len(q) for shard, q in self.streams.items() if shard not in self.owner)

    def readers(self) -> set[int]:
        """Actors that own a stream with units still queued (their next units wait for them only)."""
        return {self.owner[shard] for shard in self.streams if shard in self.owner}

    def take(self, actor: int) -> Unit | None:
        """The next unit for ``actor``: its own stream's next unit, else a seekable shard's, else the first
        unit of a stream nobody reads yet (which the actor then owns). None if nothing is left for it."""
        for shard, queue in self.streams.items():
            if self.owner.get(shard) == actor and queue:
                return self._pop(shard)
        if self.free:
            return self.free.popleft()
        for shard, queue in self.streams.items():
            if queue and shard not in self.owner:
                self.owner[shard] = actor
                return self._pop(shard)
        return None

    def _pop(self, shard: str) -> Unit:
        queue = self.streams[shard]
        unit = queue.popleft()
        if not queue:
            del self.streams[shard]
        return unit


def dispatch(queue: UnitQueue, loads: Mapping[int, int], starting: int, max_in_flight: int) -> list[tuple[int, Unit]]:
    """Hand queued units to ready actors: the (actor, unit) pairs to submit, in order, taken off ``queue``.

    ``loads`` maps each ready actor (model loaded) to its units in flight; ``starting`` counts actors
    still loading, which will ask for a unit once ready. A unit handed to an actor stays there (it is
    never taken back), so the rule decides only when to hand one out:

    1. Every idle ready actor (nothing in flight) gets a unit before any actor gets a second.
    2. A ``d``-th unit (``2 <= d <= max_in_flight``), which waits on the actor behind the ``d - 1`` it
       already holds, is handed out only if no other actor could start it sooner:

       * it is the next unit of a stream the actor reads (a ``pipe:`` shard's units go to that
         actor only), or
       * the queue holds more than ``(d - 1) * claimants`` units any actor may take, where the
         claimants are the actors that will ask for one when they next free up (every ready actor
         not reading its own stream, and every starting actor). While that holds, each of them still
         finds ``d - 1`` units queued when it asks, so the queued unit keeps nobody idle; it only
         saves its actor the round trip to the driver between units.

    Near the end of a job (the queue no larger than the claimants) units therefore stay with the
    driver and go to whichever actor frees up or becomes ready first, so no actor holds a queued,
    unstarted unit while another is idle because of this rule.
    """
    loads = dict(loads)
    handed: list[tuple[int, Unit]] = []

    def give(actor: int) -> bool:
        unit = queue.take(actor)
        if unit is None:
            return False
        handed.append((actor, unit))
        loads[actor] += 1
        return True

    for actor in sorted(loads):
        if loads[actor] == 0 and queue:
            give(actor)
    for depth in range(2, max_in_flight + 1):
        for actor in sorted(loads):
            if loads[actor] != depth - 1 or not queue:
                continue
            readers = queue.readers()
            claimants = sum(1 for a in loads if a not in readers) + starting
            if actor in readers or queue.open() > (depth - 1) * claimants:
                give(actor)
    return handed
