"""End-to-end throughput of certification through Ray against the in-process paths.

On the same model and inputs (cifar_resnet20 on 32x32 images by default), measures samples per
second of:
  * sampler   -- Sampler.counts called directly in this process on the decoded inputs (the ceiling);
  * local     -- `rscert certify --executor local` (decode, sample, bound, commit; one process);
  * ray xK    -- `rscert certify --executor ray` with K certifier actors on a local Ray, for each K
                 in --actors (CPUs split evenly among them).
Throughput is (n0 + n) x inputs over the certify phase's wall time, measured from the first to the
last unit committed (so Ray's start-up and model loading are reported separately, not hidden).
Choose --inputs/--n so the in-process job runs at least a minute.

    python bench/ray_bench.py --inputs 64 --n 2000 --actors 1,2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from shardutil import write_shards  # noqa: E402

from rscert.models.load import load_model  # noqa: E402
from rscert.sampling.sampler import Sampler, SamplerOptions  # noqa: E402
from rscert.store.results import Store  # noqa: E402


def run_job(data: str, out: Path, args, executor: str, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "rscert.cli", "certify", "--data", data, "--out", str(out), "--model",
           args.model, "--random-init", "--num-classes", "10", "--sigma", "0.5", "--n0", "100", "--n", str(args.n),
           "--batch-size", str(args.batch), "--unit-size", str(args.unit_size), "--executor", executor, *extra]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.time() - start
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    execs = Store(str(out)).executions()
    done = [os.path.getmtime(p) for p in (out / "units").glob("*.parquet")]
    first_start = min(os.path.getmtime(p) for p in (out / "units").glob("*.parquet")) - min(
        e["seconds"] for e in execs)
    compute_window = max(done) - first_start
    samples = sum(e["samples"] for e in execs)
    return {"wall": wall, "window": compute_window, "samples": samples, "rate": samples / compute_window}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--model", default="cifar_resnet20")
    ap.add_argument("--inputs", type=int, default=64)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--unit-size", type=int, default=8)
    ap.add_argument("--actors", default="1,2")
    args = ap.parse_args()
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_shards(tmp / "data", shards=4, per_shard=args.inputs // 4, size=32, classes=10)
        data = str(tmp / "data" / "data-{000000..000003}.tar")

        # the ceiling: the sampler alone on the same decoded inputs
        from rscert.data.decode import read_unit
        from rscert.data.plan import Unit
        from rscert.data.plan import unit_id as make_id
        from rscert.data.shards import expand_shards, shard_keys

        tensors, keys = [], []
        for url in expand_shards(data):
            ks = shard_keys(url)
            unit = Unit(make_id(url, 0), url, tuple(range(len(ks))), tuple(range(len(ks))), tuple(ks))
            for item in read_unit(unit, "none"):
                tensors.append(item.tensor)
                keys.append(item.key)
        torch.set_num_threads(cpus)
        model = load_model(args.model, num_classes=10, random_init=True).model
        sampler = Sampler(model, SamplerOptions(batch_size=args.batch), device="cpu")
        x = torch.stack(tensors)
        sampler.counts(x[:2], ["w1", "w2"], 0.5, args.batch, 0, "selection")
        t = time.perf_counter()
        sampler.counts(x, keys, 0.5, 100, 0, "selection")
        sampler.counts(x, keys, 0.5, args.n, 0, "estimation")
        elapsed = time.perf_counter() - t
        ceiling = len(keys) * (100 + args.n) / elapsed
        rows = [("sampler (in-process)", elapsed, elapsed, ceiling)]

        local = run_job(data, tmp / "local", args, "local", [])
        rows.append(("rscert local executor", local["wall"], local["window"], local["rate"]))
        for k in [int(a) for a in args.actors.split(",")]:
            r = run_job(data, tmp / f"ray{k}", args, "ray", ["--num-actors", str(k), "--cpus-per-actor",
                                                              str(cpus / k)])
            rows.append((f"ray, {k} actor(s) x {cpus / k:g} CPU", r["wall"], r["window"], r["rate"]))
    print(f"model {args.model}, {len(keys)} inputs x (100 + {args.n}) samples, batch {args.batch}, "
          f"{cpus} CPUs, torch {torch.__version__}")
    print(f"{'path':<30}{'wall s':>9}{'certify s':>11}{'samples/s':>12}{'x sampler':>11}")
    for name, wall, window, rate in rows:
        print(f"{name:<30}{wall:>9.1f}{window:>11.1f}{rate:>12.0f}{rate / ceiling:>11.3f}")
    print(json.dumps({name: round(rate / ceiling, 3) for name, _, _, rate in rows}))


if __name__ == "__main__":
    main()
