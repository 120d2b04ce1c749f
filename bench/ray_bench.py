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

The tail of each Ray job (from its execution records and the unit files' commit times): `last gap s`,
seconds between the first and the last actor finishing its last unit (the job's end), and `idle
tail actor-s`, the actor-seconds spent idle after each actor's last unit while the job still ran, and
`gap / unit s`, the last gap over the run's mean unit time (units slow down when the machine is busy).
With --baseline (another checkout, e.g. of main; its package folder is pipeline/) every Ray job also
runs on that code, alternating, --repeat times each, and the tail ratios (this / baseline) print in
the same run.

    python bench/ray_bench.py --inputs 64 --n 2000 --actors 1,2
    python bench/ray_bench.py --ray-only --baseline /tmp/main --actors 2,3 --unit-size 5 --repeat 3
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


def run_job(data: str, out: Path, args, executor: str, extra: list[str], code: Path = ROOT) -> dict:
    cmd = [sys.executable, "-m", "rscert.cli", "certify", "--data", data, "--out", str(out), "--model",
           args.model, "--random-init", "--num-classes", "10", "--sigma", "0.5", "--n0", "100", "--n", str(args.n),
           "--batch-size", str(args.batch), "--unit-size", str(args.unit_size), "--executor", executor, *extra]
    path = [str(code / ".pp"), str(code), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.time() - start
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    store = Store(str(out))
    execs = store.executions()
    done = {e["unit_id"]: os.path.getmtime(store.unit_path(e["unit_id"])) for e in execs}  # commit times
    first_start = min(done[e["unit_id"]] - e["seconds"] for e in execs)
    end = max(done.values())
    last: dict[str, float] = {}  # actor -> when it finished its last unit
    for e in execs:
        last[e["worker"]] = max(last.get(e["worker"], 0.0), done[e["unit_id"]])
    samples = sum(e["samples"] for e in execs)
    return {"wall": wall, "window": end - first_start, "samples": samples, "rate": samples / (end - first_start),
            "gap": end - min(last.values()), "idle": sum(end - t for t in last.values()), "actors": len(last),
            "unit_s": sum(e["seconds"] for e in execs) / len(execs)}  # mean seconds per unit


TAIL = ("window", "unit_s", "gap", "idle", "gap_units")


def ray_jobs(data: str, tmp: Path, args, cpus: int) -> list[tuple[str, Path, int, dict]]:
    """Each --actors setting on this code (and on --baseline's, alternating), --repeat times."""
    codes = [("this", ROOT)] + ([("baseline", args.baseline)] if args.baseline else [])
    results = []
    for k in [int(a) for a in args.actors.split(",")]:
        extra = ["--num-actors", str(k), "--cpus-per-actor", str(cpus / k)]
        for r in range(args.repeat):
            for name, code in codes:
                result = run_job(data, tmp / f"ray{k}-{name}-{r}", args, "ray", extra, code)
                results.append((name, code, k, result))
                print(f"ray x{k} {name} run {r + 1}: certify {result['window']:.1f}s, unit {result['unit_s']:.1f}s, "
                      f"last gap {result['gap']:.1f}s, idle tail {result['idle']:.1f} actor-s", file=sys.stderr,
                      flush=True)
    return results


def tail_table(results: list[tuple[str, Path, int, dict]], cpus: int) -> dict:
    print(f"{'ray tail (mean of runs)':<30}{'code':>9}{'certify s':>11}{'unit s':>8}{'last gap s':>12}"
          f"{'idle tail actor-s':>19}{'gap / unit s':>14}")
    summary: dict = {}
    for k in sorted({k for _, _, k, _ in results}):
        for name in sorted({n for n, _, kk, _ in results if kk == k}, reverse=True):
            runs = [r for n, _, kk, r in results if kk == k and n == name]
            for r in runs:
                r["gap_units"] = r["gap"] / r["unit_s"]  # the tail in units of this run's own unit time
            mean = {f: sum(r[f] for r in runs) / len(runs) for f in TAIL}
            summary.setdefault(k, {})[name] = mean
            print(f"{f'{k} actor(s) x {cpus / k:g} CPU, {len(runs)} run(s)':<30}{name:>9}{mean['window']:>11.1f}"
                  f"{mean['unit_s']:>8.1f}{mean['gap']:>12.1f}{mean['idle']:>19.1f}{mean['gap_units']:>14.2f}")
    ratios = {k: {f: round(v["this"][f] / max(v["baseline"][f], 1e-9), 3) for f in TAIL}
              for k, v in summary.items() if "baseline" in v}
    if ratios:
        print("this / baseline:", json.dumps(ratios))
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--model", default="cifar_resnet20")
    ap.add_argument("--inputs", type=int, default=64)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--unit-size", type=int, default=8)
    ap.add_argument("--actors", default="1,2")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each Ray job (per code)")
    ap.add_argument("--baseline", type=Path, help="another checkout (e.g. of main) whose Ray jobs run too")
    ap.add_argument("--ray-only", action="store_true", help="skip the sampler ceiling and the local executor")
    args = ap.parse_args()
    if args.baseline:
        args.baseline = args.baseline.resolve()
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_shards(tmp / "data", shards=4, per_shard=args.inputs // 4, size=32, classes=10)
        data = str(tmp / "data" / "data-{000000..000003}.tar")
        rows, ceiling = ([], None) if args.ray_only else ceiling_and_local(data, tmp, args, cpus)
        results = ray_jobs(data, tmp, args, cpus)
    print(f"model {args.model}, {4 * (args.inputs // 4)} inputs x (100 + {args.n}) samples, batch {args.batch}, "
          f"units of {args.unit_size}, {cpus} CPUs, torch {torch.__version__}")
    for name, _, k, r in results:
        if name == "this":
            rows.append((f"ray, {k} actor(s) x {cpus / k:g} CPU", r["wall"], r["window"], r["rate"]))
    print(f"{'path':<30}{'wall s':>9}{'certify s':>11}{'samples/s':>12}{'x sampler':>11}")
    for name, wall, window, rate in rows:
        relative = f"{rate / ceiling:>11.3f}" if ceiling else f"{'':>11}"
        print(f"{name:<30}{wall:>9.1f}{window:>11.1f}{rate:>12.0f}{relative}")
    if ceiling:
        print(json.dumps({name: round(rate / ceiling, 3) for name, _, _, rate in rows}))
    tail_table(results, cpus)


def ceiling_and_local(data: str, tmp: Path, args, cpus: int) -> tuple[list, float]:
    """The sampler alone on the same decoded inputs (the ceiling), then the local executor."""
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
    return rows, ceiling


if __name__ == "__main__":
    main()
