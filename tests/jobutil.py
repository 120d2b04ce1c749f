"""Run the rscert command for tests, in-process or as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
RSCERT = [sys.executable, "-m", "rscert.cli"]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


def certify_args(data: str, out: Path | str, **overrides) -> list[str]:
    # tests.zoo:tiny_cnn fills its weights from a fixed generator: a deliberate random network
    settings = {"model": "tests.zoo:tiny_cnn", "random-init": True, "sigma": 0.5, "n0": 40, "n": 400, "alpha": 0.001,
                "unit-size": 4, "batch-size": 256, "seed": 3, **overrides}
    args = ["certify", "--data", data, "--out", str(out)]
    for k, v in settings.items():
        if v is True:
            args.append(f"--{k}")
        elif v is not None:
            args += [f"--{k}", str(v)]
    return args


def run(args: list[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(RSCERT + args, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env(), **kw)


def table(out: Path) -> pl.DataFrame:
    return pl.read_parquet(f"{out}/**/*.parquet").sort("index")
