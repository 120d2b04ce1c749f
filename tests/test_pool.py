"""Sizing the actor pool from the cluster's nodes (pipeline/run/pool.py) and its settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rscert.config.certify import CertifyConfig
from rscert.config.files import format_validation_error
from rscert.run.pool import actor_demand, capacity, fits_on, missing_resources, pool_target

BASE = {"data": "d.tar", "out": "out", "model": "tests.zoo:tiny_cnn", "sigma": 0.5}


def test_an_actor_fits_on_a_node_not_on_the_cluster_sum():
    one_cpu = actor_demand(1, 0)
    assert one_cpu == {"CPU": 1.0}
    assert capacity([{"CPU": 1.5}, {"CPU": 1.5}], one_cpu) == 2  # the sum (3 CPUs) would say 3
    gpu = actor_demand(4, 1)
    assert fits_on({"CPU": 8, "GPU": 4}, gpu) == 2  # CPUs bind first
    assert fits_on({"CPU": 0, "GPU": 8}, gpu) == 0  # a head with CPU: 0 holds none
    assert capacity([{"CPU": 16}, {"CPU": 8, "GPU": 1}], gpu) == 1  # a CPU-only node holds no GPU actor
    assert fits_on({"CPU": 2, "GPU": 1}, actor_demand(1, 0.5)) == 2  # fractional GPUs


def test_pool_target_follows_capacity_between_bounds_and_never_exceeds_the_queue():
    assert pool_target(0, 10, 1, None) == 1  # nothing placeable yet: one actor waits (autoscaler demand)
    assert pool_target(4, 10, 1, None) == 4  # one per slot, growing with the cluster
    assert pool_target(4, 10, 8, None) == 8  # min_actors requested up front, 4 of them wait
    assert pool_target(16, 10, 1, 6) == 6  # max_actors caps
    assert pool_target(16, 3, 1, None) == 3  # never more actors than units that could go to them
    assert pool_target(16, 0, 1, None) == 0


def test_missing_resources_names_what_no_node_offers():
    message = missing_resources([{"CPU": 1}, {"CPU": 1, "node2": 1}], actor_demand(1, 1), {"CPU": 2})
    assert "missing: GPU" in message and "{CPU: 1, GPU: 0}" in message
    message = missing_resources([{"CPU": 4}], actor_demand(1, 0), {"CPU": 0})
    assert "could hold 4 actor(s)" in message and "free now {CPU: 0}" in message
    assert "no alive node" in missing_resources([], actor_demand(1, 0), {})


def test_num_actors_is_a_fixed_pool_and_bounds_are_checked():
    config = CertifyConfig(**BASE, num_actors=3)
    assert (config.min_actors, config.max_actors) == (3, 3)
    assert CertifyConfig(**config.model_dump()).max_actors == 3  # the dump sent to actors validates again
    default = CertifyConfig(**BASE)
    assert (default.min_actors, default.max_actors) == (1, None)
    with pytest.raises(ValidationError) as bad:
        CertifyConfig(**BASE, min_actors=4, max_actors=2)
    assert "max-actors: must be at least min_actors (4), got 2" in format_validation_error(bad.value)
    with pytest.raises(ValidationError) as both:
        CertifyConfig(**BASE, num_actors=2, max_actors=4)
    assert "num-actors: deprecated" in format_validation_error(both.value)

