"""The driver's queue of pending units, with shard affinity for streams (no Ray here).

Units of a seekable shard go to whichever actor asks next. Units of a sequential shard (``pipe:``,
compressed tar; :func:`rscert.data.shards.sequential`) can only be read from the shard's first byte
on, so one actor takes all of a shard's units, in order, and reads them over one stream (the
worker's :class:`~rscert.data.shards.StreamCursor`): the shard is streamed once, not once per unit.
An actor that is lost gives its shards back (another actor then starts a new stream).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator

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
