"""The model's facts on Ray: loaded and probed in a Ray task, so that the Ray executor's driver never
imports torch (see :mod:`rscert.run.model_facts`; the second Ray module of the executor)."""

from __future__ import annotations

import sys

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rscert.config.certify import CertifyConfig
from rscert.errors import ConfigError
from rscert.run.model_facts import ModelFacts, facts_or_error, raise_error
from rscert.run.ray_runner import init_ray
from rscert.store.results import Store


def remote_model_facts(config: CertifyConfig, shard: str) -> ModelFacts:
    """The model's facts (:func:`rscert.run.model_facts.load_facts`), computed in a Ray task in a worker
    process that exits afterwards (``max_calls=1``: its torch and model go with it). It runs on this
    driver's node when the actors must stay there (a local ``--out``), and takes one CPU: the probe
    runs on the CPU in fp32, as the local executor's does, so a GPU cluster's GPUs stay free for the
    actors (and a job on a node without GPUs is told so by the executor, not stuck here). It is waited
    for as long as it takes (loading a large checkpoint from an object store may take minutes), unless
    no node it may use has a CPU at all. The task's model, configuration and storage errors are raised
    here as the same one-line errors."""
    init_ray(config.ray_address)
    options: dict = {"num_cpus": 1, "num_gpus": 0, "max_retries": 0}
    node = None
    if Store(config.out, config.storage_options).local and not config.shared_filesystem:
        node = ray.get_runtime_context().get_node_id()
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
    nodes = [n for n in ray.nodes() if n.get("Alive") and node in (None, n.get("NodeID"))]
    if not any(n.get("Resources", {}).get("CPU", 0) >= 1 for n in nodes):  # it would wait forever
        where = "this driver's node (--out is a local path)" if node else "the Ray cluster"
        raise ConfigError("executor", f"no node of {where} has a CPU for the task that loads the model")
    ref = ray.remote(max_calls=1)(facts_or_error).options(**options).remote(config.model_dump(), shard)
    if not ray.wait([ref], timeout=max(config.actor_start_timeout, 60.0))[0]:
        print("ray: still loading the model in a Ray task (it needs 1 free CPU)", file=sys.stderr, flush=True)
    result = ray.get(ref)
    if isinstance(result, tuple):
        raise_error(result)
    return result
