"""The Ray executor's driver never imports torch (issue 21: it stays under 1 GB at 5 million inputs):
the model is loaded and probed in a Ray task, and its errors still reach the user as the same one-line
messages. Real local Ray on loopback, the CLI as a subprocess (the driver's own sys.modules)."""

from __future__ import annotations

import json
import subprocess

import pytest

from rscert.cli import main

from .jobutil import ROOT, certify_args, table
from .raycluster import VENV_BIN, head_cluster
from .shardutil import write_shards

DRIVER = ("import sys\nfrom rscert.cli import main\nrc = main(sys.argv[1:])\n"
          "print('driver imported torch:', 'torch' in sys.modules, 'torchvision' in sys.modules, file=sys.stderr)\n"
          "sys.exit(rc)\n")
COLS = ["key", "index", "label", "prediction", "top_class", "count_select", "count_top", "p_lower", "radius"]


@pytest.fixture(scope="module")
def cluster():
    with head_cluster(num_cpus=2) as c:
        yield c


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("raydriver")
    write_shards(folder, shards=2, per_shard=6)
    return str(folder / "data-{000000..000001}.tar")


def _driver(cluster, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([*cluster.enter, str(VENV_BIN / "python"), "-c", DRIVER, *args], cwd=ROOT,
                          env=cluster.env, capture_output=True, text=True, timeout=600)


def test_the_ray_driver_never_imports_torch_and_its_rows_equal_the_local_executors(cluster, data, tmp_path):
    settings = {"n0": 20, "n": 200, "unit-size": 3, "seed": 11}
    assert main(certify_args(data, tmp_path / "local", **settings)) == 0
    args = certify_args(data, tmp_path / "ray", **settings, **{"executor": "ray", "ray-address": cluster.address})
    result = _driver(cluster, args)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    assert "driver imported torch: False False" in text, text[-3000:]
    assert "certifying: 12/12 inputs (100%)" in text
    got, want = table(tmp_path / "ray"), table(tmp_path / "local")
    assert got.height == 12 and got["key"].n_unique() == 12
    assert got.select(COLS).equals(want.select(COLS))
    # the manifest's model facts (weights hashed in the Ray task) are the local run's

    manifests = [json.loads((tmp_path / side / "_rscert_manifest.json").read_text()) for side in ("local", "ray")]
    assert manifests[0]["model"] == manifests[1]["model"] and manifests[0]["model"]["weights_sha256"]
    assert manifests[0]["fingerprint"] == manifests[1]["fingerprint"]


@pytest.mark.parametrize("model, extra, expected", [
    ("tests.zoo:wide_cnn", {"num-classes": 4}, "error: num-classes: the model outputs 6 classes"),
    ("tests.nowhere:net", {}, "error: model: cannot import module 'tests.nowhere'"),
])
def test_model_errors_from_the_ray_task_are_the_local_one_line_messages(cluster, data, tmp_path, capsys, model,
                                                                        extra, expected):
    settings = {"model": model, **extra}
    assert main(certify_args(data, tmp_path / "local", **settings)) == 2
    local = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    result = _driver(cluster, certify_args(data, tmp_path / "ray", **settings,
                                           **{"executor": "ray", "ray-address": cluster.address}))
    text = result.stdout + result.stderr
    assert result.returncode == 2, text[-3000:]
    assert "Traceback" not in text and "RayTaskError" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert errors == local and errors[0].startswith(expected), (errors, local)
    assert "driver imported torch: False" in text
    assert not (tmp_path / "ray" / "_rscert_manifest.json").exists()  # nothing written
