"""Plan work units over shards (no Ray, no model, no torch).

Selection follows the paper's scripts: the dataset index i runs over all samples of all shards in
order; an input is selected if ``start <= i < end`` and ``i % skip == 0``; at most ``max`` inputs
are kept. Inputs already committed (under the same result fingerprint) are left out, and each
shard's remaining selected positions are cut into units of at most ``unit_size`` inputs: a run
resumes input by input and commits unit by unit, so a selection or unit size may change between
runs into one output and each input is still certified exactly once. A unit's id is a stable
function of its shard and its positions.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from rscert.data.shards import shard_name


@dataclass(frozen=True)
class Selection:
    skip: int = 1
    start: int = 0
    end: int | None = None
    max: int | None = None

    def picks(self, index: int) -> bool:
        return index >= self.start and (self.end is None or index < self.end) and index % self.skip == 0


@dataclass(frozen=True)
class Unit:
    """A work unit: some inputs of one shard, given by their positions and dataset indices."""

    unit_id: str
    shard: str
    positions: tuple[int, ...]
    indices: tuple[int, ...]
    keys: tuple[str, ...]

    def to_json(self) -> dict:
        return {"unit_id": self.unit_id, "shard": self.shard, "positions": list(self.positions),
                "indices": list(self.indices), "keys": list(self.keys)}

    @classmethod
    def from_json(cls, d: dict) -> Unit:
        return cls(d["unit_id"], d["shard"], tuple(d["positions"]), tuple(d["indices"]), tuple(d["keys"]))


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
    selected_indices: set[int] = field(default_factory=set)  # their dataset indices
    failed_shards: dict[str, str] = field(default_factory=dict)  # url -> reason
    deferred_shards: list[str] = field(default_factory=list)  # offsets unknown until a failed shard reads


def plan_units(
    shards: Sequence[str], shard_keys: dict[str, list[str] | str], selection: Selection, unit_size: int,
    committed: Collection[int] = (), changed: Mapping[str, str] | None = None,
) -> Plan:
    """Cut the selected inputs not in ``committed`` (dataset indices) into units. ``shard_keys[url]``
    is the shard's key list, or the reason it could not be read. Indices of shards after an
    unreadable one are unknown, so those shards are deferred (reported, not run) until it reads.
    A shard in ``changed`` (url -> reason; its recorded key list still gives the indices) runs no
    unit: its selected inputs stay selected (in every denominator) and the shards after it run."""
    changed = changed or {}
    plan = Plan(units=[], changed_shards=dict(changed))
    offset, kept = 0, 0
    for pos_in_list, url in enumerate(shards):
        keys = shard_keys[url]
        if isinstance(keys, str):
            plan.failed_shards[url] = keys
            plan.deferred_shards = [u for u in shards[pos_in_list + 1 :] if not isinstance(shard_keys[u], str)]
            for later in shards[pos_in_list + 1 :]:
                if isinstance(shard_keys[later], str):
                    plan.failed_shards[later] = shard_keys[later]
            break
        chosen = []
        for position in range(len(keys)):
            if selection.max is not None and kept >= selection.max:
                break
            if selection.picks(offset + position):
                kept += 1
                plan.selected_indices.add(offset + position)
                if offset + position in committed:
                    plan.done += 1
                else:
                    chosen.append(position)
        if url in changed:
            chosen = []
        for i in range(0, len(chosen), unit_size):
            part = chosen[i : i + unit_size]
            plan.units.append(
                Unit(unit_id(url, part[0], part), url, tuple(part), tuple(offset + p for p in part),
                     tuple(keys[p] for p in part))
            )
        offset += len(keys)
    plan.selected = kept
    return plan
