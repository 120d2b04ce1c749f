"""The Ray driver's dispatch rule (rscert.run.unit_queue.dispatch), without Ray: idle actors first, no
queued unit held back from an idle actor at the end of a job, late and lost actors, stream affinity."""

from __future__ import annotations

import random

import pytest

from rscert.data.plan import Unit
from rscert.data.shards import sequential
from rscert.run.unit_queue import UnitQueue, dispatch


def _units(count: int, shard: str = "data-000000.tar", size: int = 2) -> list[Unit]:
    out = []
    for i in range(count):
        positions = tuple(range(i * size, (i + 1) * size))
        out.append(Unit(f"{shard}:{i}", shard, positions, positions, tuple(f"k{p}" for p in positions)))
    return out


def _queue(units: list[Unit]) -> UnitQueue:
    return UnitQueue(units, sequential)


def test_every_idle_actor_gets_a_unit_before_any_gets_a_second():
    queue = _queue(_units(10))
    handed = dispatch(queue, {0: 0, 1: 0, 2: 0}, starting=0, max_in_flight=2)
    assert [a for a, _ in handed[:3]] == [0, 1, 2]  # first one each
    assert [a for a, _ in handed[3:]] == [0, 1, 2]  # then the queued seconds: 10 - 3 = 7 > 3 claimants
    assert len(queue) == 4
    assert len({u.unit_id for _, u in handed}) == 6
    # an actor busy with one unit does not get its second before an idle one gets its first
    queue = _queue(_units(10))
    handed = dispatch(queue, {0: 1, 1: 0}, starting=0, max_in_flight=2)
    assert [a for a, _ in handed] == [1, 0, 1]


def test_the_first_ready_actor_does_not_take_the_late_actors_unit():
    """Three units, actor 0 ready, actor 1 still loading: actor 0 takes one, not two."""
    queue = _queue(_units(3))
    assert [a for a, _ in dispatch(queue, {0: 0}, starting=1, max_in_flight=2)] == [0]
    assert len(queue) == 2  # 2 units, 2 claimants (actor 0 when it frees up, actor 1 when ready)
    assert dispatch(queue, {0: 1}, starting=1, max_in_flight=2) == []
    assert [a for a, _ in dispatch(queue, {0: 1, 1: 0}, starting=0, max_in_flight=2)] == [1]
    assert dispatch(queue, {0: 1, 1: 1}, starting=0, max_in_flight=2) == []  # 1 left, 2 will ask


def test_end_of_job_keeps_the_last_units_with_the_driver():
    for left, seconds in [(2, 0), (3, 1), (4, 2), (5, 2)]:
        queue = _queue(_units(left))
        handed = dispatch(queue, {0: 1, 1: 1}, starting=0, max_in_flight=2)
        assert len(handed) == seconds, left
        assert len(queue) == left - seconds >= 2
    # one ready actor alone: its second only while another unit would remain for it
    queue = _queue(_units(2))
    assert len(dispatch(queue, {0: 1}, starting=0, max_in_flight=2)) == 1
    assert dispatch(queue, {0: 1}, starting=0, max_in_flight=2) == []


def test_deeper_queues_need_a_unit_per_claimant_per_level():
    queue = _queue(_units(20))
    handed = dispatch(queue, {0: 0, 1: 0}, starting=0, max_in_flight=3)
    assert [a for a, _ in handed] == [0, 1, 0, 1, 0, 1]
    queue = _queue(_units(7))  # firsts: 5 left > 2 -> seconds: 3 left, not > 2 * 2 -> no thirds
    assert [a for a, _ in dispatch(queue, {0: 0, 1: 0}, starting=0, max_in_flight=3)] == [0, 1, 0, 1]
    queue = _queue(_units(5))
    assert [a for a, _ in dispatch(queue, {0: 0, 1: 0}, starting=0, max_in_flight=1)] == [0, 1]


@pytest.mark.parametrize("starting", [0, 1])
def test_a_lost_actors_unit_is_the_next_one_handed_out(starting):
    queue = _queue(_units(3))
    first = dispatch(queue, {0: 0, 1: 0}, starting=0, max_in_flight=2)
    assert [a for a, _ in first] == [0, 1]
    queue.release(0)
    queue.appendleft(first[0][1])  # actor 0 lost mid-unit
    handed = dispatch(queue, {1: 1, 2: 0} if not starting else {1: 1}, starting=starting, max_in_flight=2)
    if starting:  # 2 queued, 2 will ask (actor 1, the replacement): both stay with the driver
        assert handed == []
    else:  # the replacement is ready and idle: it gets the lost unit first
        assert handed[0] == (2, first[0][1])
        assert len(handed) == 1  # 1 left, 2 claimants


def _simulate(units: list[Unit], ready_at: list[float], max_in_flight: int, seconds, rule=dispatch) -> dict:
    """Run the rule against actors that become ready at ``ready_at`` and take ``seconds(unit)`` per unit
    (no driver latency). Checks after every dispatch that no ready actor is idle while another holds a
    queued, unstarted unit; returns each unit's actor and the makespan."""
    queue = _queue(units)
    held: dict[int, list[Unit]] = {}  # ready actor -> its units in flight (the first one runs)
    ends: dict[int, float] = {}  # actor -> when its running unit ends
    ran: dict[str, int] = {}
    now = 0.0
    while True:
        for actor, at in enumerate(ready_at):
            if at <= now and actor not in held:
                held[actor] = []
        for actor, end in list(ends.items()):
            if end <= now:
                del ends[actor]
                held[actor].pop(0)
                if held[actor]:
                    ends[actor] = now + seconds(held[actor][0])
        starting = sum(1 for actor, at in enumerate(ready_at) if actor not in held)
        for actor, unit in rule(queue, {a: len(h) for a, h in held.items()}, starting, max_in_flight):
            assert unit.unit_id not in ran
            ran[unit.unit_id] = actor
            held[actor].append(unit)
            if len(held[actor]) == 1:
                ends[actor] = now + seconds(unit)
            assert len(held[actor]) <= max_in_flight
        idle = [a for a, h in held.items() if not h]
        queued = [a for a, h in held.items() if len(h) > 1]
        assert not (idle and queued), f"at {now}: actors {idle} idle while {queued} hold queued units"
        if not queue and not ends:
            return {"ran": ran, "makespan": now}
        upcoming = [*ends.values(), *(at for a, at in enumerate(ready_at) if a not in held)]
        now = min(upcoming)


@pytest.mark.parametrize("seed", range(40))
def test_simulated_jobs_never_leave_an_actor_idle_beside_a_queued_unit(seed):
    """Equal-speed actors, ready at random times, equal units: every unit runs once, and at no moment is
    an actor idle while another holds a unit it has not started (the old rule, filling each ready actor
    to max_in_flight in turn, fails this: three units, three actors, the first ready takes two)."""
    rng = random.Random(seed)
    actors = rng.randint(1, 6)
    ready_at = sorted(rng.uniform(0, 3) for _ in range(actors))
    units = _units(rng.randint(1, 30))
    result = _simulate(units, ready_at, rng.choice([1, 2, 2, 3]), lambda unit: 1.0)
    assert sorted(result["ran"]) == sorted(u.unit_id for u in units)


def test_simulation_catches_the_old_rule():
    """The checker has teeth: a rule that fills each ready actor in turn fails it."""

    def fill(queue, loads, starting, max_in_flight):
        out = []
        for actor in sorted(loads):
            for _ in range(max_in_flight - loads[actor]):
                unit = queue.take(actor)
                if unit is not None:
                    out.append((actor, unit))
        return out

    with pytest.raises(AssertionError, match="idle while"):
        _simulate(_units(3), [0.0, 0.1, 0.2], 2, lambda unit: 1.0, rule=fill)
    _simulate(_units(3), [0.0, 0.1, 0.2], 2, lambda unit: 1.0)


def test_a_streams_units_stay_with_its_reader():
    """A pipe: shard's units go to the actor that reads it, which may queue its next one even at the end
    (no other actor could start it); other actors get the seekable units."""
    stream = _units(3, shard="pipe:cat a.tar")
    queue = _queue([*stream, *_units(1)])
    handed = dispatch(queue, {0: 0, 1: 0}, starting=0, max_in_flight=2)
    # actor 0 takes the seekable unit, actor 1 opens the stream and queues its next unit (it reads it)
    assert [(a, u.shard) for a, u in handed] == [(0, "data-000000.tar"), (1, "pipe:cat a.tar"),
                                                (1, "pipe:cat a.tar")]
    assert dispatch(queue, {0: 1, 1: 2}, starting=0, max_in_flight=2) == []  # actor 0 may not take it
    assert dispatch(queue, {0: 0, 1: 1}, starting=0, max_in_flight=2) == [(1, stream[2])]
    assert not queue
    # the reader is lost: its units go back in order, and the stream to the next actor that asks
    queue = _queue(stream)
    a, b = (u for _, u in dispatch(queue, {0: 0}, starting=0, max_in_flight=2))
    queue.release(0)
    queue.appendleft(b)
    queue.appendleft(a)
    assert [u for _, u in dispatch(queue, {1: 0}, starting=1, max_in_flight=2)] == [a, b]
