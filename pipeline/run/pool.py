"""How many certifier actors the cluster holds, and what one that cannot be placed is missing (no Ray here).

The Ray driver (runner.py) asks these questions again every few seconds with the alive nodes'
total resources, so the pool follows the cluster: a node that joins raises the capacity and gets
actors, an autoscaler that adds nodes for waiting actors raises it too.

An actor fits on a node, not on the cluster's sum: two nodes with 1.5 CPUs each hold two
one-CPU actors, not three. Only totals are used (not what is free now): actors that do not fit yet
simply wait, and their demand is what an autoscaler sees.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

Resources = Mapping[str, float]


def actor_demand(cpus: float, gpus: float) -> dict[str, float]:
    """The resources one certifier actor reserves."""
    demand = {"CPU": float(cpus)}
    if gpus:
        demand["GPU"] = float(gpus)
    return demand


def fits_on(node: Resources, demand: Resources) -> int:
    """How many actors with ``demand`` one node holds by its total resources."""
    counts = [math.floor(node.get(name, 0.0) / need + 1e-9) for name, need in demand.items() if need > 0]
    return max(0, min(counts)) if counts else 0


def capacity(nodes: Iterable[Resources], demand: Resources) -> int:
    """How many actors the given (alive) nodes hold together."""
    return sum(fits_on(node, demand) for node in nodes)


def pool_target(cluster_capacity: int, units_left: int, min_actors: int, max_actors: int | None) -> int:
    """Actors to keep: one per slot the cluster has, at least ``min_actors`` (those that do not fit yet
    wait, which is what makes an autoscaler add nodes), at most ``max_actors``, and never more than
    there are units left to run."""
    target = max(min_actors, cluster_capacity)
    if max_actors is not None:
        target = min(target, max_actors)
    return max(0, min(target, units_left))


def _show(resources: Resources) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items())) + "}"


def missing_resources(nodes: list[Resources], demand: Resources, available: Resources) -> str:
    """Why no actor is ready: which resource of ``demand`` no alive node has, or that it is all taken."""
    if not nodes:
        return f"the cluster has no alive node; each actor needs {_show(demand)}"
    short = sorted({name for name, need in demand.items() if all(n.get(name, 0.0) < need for n in nodes)})
    largest = {name: max(n.get(name, 0.0) for n in nodes) for name in demand}
    if short or capacity(nodes, demand) == 0:
        names = ", ".join(short) or "the combination"
        return (f"no alive node has the resources of one actor {_show(demand)} (missing: {names}; the largest "
                f"node offers {_show(largest)}): add such nodes (an autoscaler adds them for the waiting "
                "actors) or lower gpus_per_actor / cpus_per_actor")
    free = {name: available.get(name, 0.0) for name in demand}
    return (f"the nodes could hold {capacity(nodes, demand)} actor(s) of {_show(demand)}, but none became ready: "
            f"free now {_show(free)} (taken by other work?), or loading the model takes longer than "
            "actor_start_timeout")

