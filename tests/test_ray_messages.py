"""Ray failures that are the user's to fix end as one named message (issue 22 items 4 and 5): actors
no node can place fail the same way whether --out is local (actors pinned to the driver's node) or an
object store; a wrong cluster token is one line naming RAY_AUTH_TOKEN. Real local Ray on loopback."""

from __future__ import annotations

import subprocess

import pytest

from rscert.run.pool import actor_demand, missing_resources

from .jobutil import ROOT, certify_args
from .raycluster import VENV_BIN, head_cluster
from .shardutil import write_shards


@pytest.fixture(scope="module")
def cluster():
    with head_cluster(num_cpus=2) as c:
        yield c


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("raymsg")
    write_shards(folder, shards=2, per_shard=4)
    return str(folder / "data-{000000..000001}.tar")


def _certify(cluster, args: list[str], **environment) -> subprocess.CompletedProcess:
    return subprocess.run([*cluster.enter, str(VENV_BIN / "python"), "-m", "rscert.cli", *args], cwd=ROOT,
                          env={**cluster.env, **environment}, capture_output=True, text=True, timeout=600)


def test_a_gpu_job_on_a_node_without_gpus_fails_with_the_resource_message_for_a_local_out(cluster, data, tmp_path):
    args = certify_args(data, tmp_path / "out", **{"executor": "ray", "ray-address": cluster.address,
                                                   "gpus-per-actor": 1, "actor-start-timeout": 20})
    result = _certify(cluster, args)
    text = result.stdout + result.stderr
    assert result.returncode == 1, text
    assert "ActorUnschedulableError" not in text and "Traceback" not in text, text[-3000:]
    # the message of pool.missing_resources, as an object-store output gets it
    expected = missing_resources([{"CPU": 2.0}], actor_demand(1.0, 1.0), {}).split(" (missing")[0]
    assert expected in text, text[-3000:]
    assert "missing: GPU" in text


def test_a_wrong_cluster_token_is_one_line_naming_the_setting(cluster, data, tmp_path):
    args = certify_args(data, tmp_path / "out", **{"executor": "ray", "ray-address": cluster.address})
    result = _certify(cluster, args, RAY_AUTH_TOKEN="0" * 32)
    text = result.stdout + result.stderr
    assert result.returncode == 2, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "RAY_AUTH_TOKEN" in errors[0] and cluster.address in errors[0], text[-3000:]
