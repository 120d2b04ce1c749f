"""Orchestration at scale against a real S3 API: bytes and requests per job, time to the first unit,
no-op reruns, analysis requests, and the driver's memory at the end of a large run.

A moto S3 server runs on loopback inside this process, behind a WSGI middleware that counts every
request (method, key, Range) and every response byte, by key prefix. `rscert` runs as a subprocess
with PYTHONPATH set to --code (this checkout by default; point it at an older checkout to measure
"before"), so both sides are measured by the same counters. A trivial model (a random tiny CNN,
small n) makes orchestration, not compute, show. Measures:

  reads      bytes GET from the shards' prefix over the dataset's bytes (planning included), requests
             per unit on the shards and on the output, without a sidecar index and (when the code has
             `rscert index`) with one; then a no-op rerun (requests per unit file) and `rscert analyze`
             (requests per unit file)
  first      seconds from starting `rscert certify` to the first unit file PUT, for 64 and 640 shards
             (the job is stopped there)
  memory     peak RSS of the driver's end-of-run bookkeeping (what `prepare` and `report` read of the
             committed unit files) over --memory-inputs rows in units of --memory-unit-size (32), in a
             fresh process
  plan       peak RSS of the driver planning a fresh job over --plan-shards x --plan-per-shard inputs
             (6400 x 782: 5 million) from sidecar indexes (sparse shard files, no image written), every
             unit pending and held as the executor's queue holds them; with the Ray executor's imports
             (the model's facts come from the Ray task, stubbed here) and the local one's; then every
             unit's rows' facts as workers return them, and the closing summary over them

    python bench/scale_bench.py                     # this checkout, the scaled-down defaults
    python bench/scale_bench.py --code /tmp/before  # another checkout (its package folder is pipeline/)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from shardutil import write_shards  # noqa: E402

BUCKET = "bench"
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class Counting:
    """WSGI middleware: counts requests and response bytes by the key's first path segment."""

    def __init__(self, app) -> None:  # noqa: ANN001
        self.app = app
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.requests: Counter[tuple[str, str]] = Counter()  # (prefix, method) -> count
            self.bytes: Counter[str] = Counter()  # prefix -> response bytes
            self.first_unit_put: float | None = None
            self.unit_files: Counter[str] = Counter()  # prefix -> requests on OUT/units/<file> (not listings)

    def __call__(self, environ, start_response):  # noqa: ANN001, ANN204
        path = environ.get("PATH_INFO", "")
        parts = path.lstrip("/").split("/")
        prefix = parts[1] if len(parts) > 1 and parts[0] == BUCKET and parts[1] else "(bucket)"
        if prefix == "(bucket)":  # a listing: the prefix is in the query
            query = environ.get("QUERY_STRING", "")
            for item in query.split("&"):
                if item.startswith("prefix="):
                    prefix = item.removeprefix("prefix=").split("%2F")[0].split("/")[0] or "(bucket)"
        method = environ.get("REQUEST_METHOD", "")
        with self.lock:
            self.requests[(prefix, method)] += 1
            if "/units/" in path:
                self.unit_files[prefix] += 1
            if method == "PUT" and "/units/" in path and self.first_unit_put is None:
                self.first_unit_put = time.time()
        body = self.app(environ, start_response)
        total = 0
        try:
            for chunk in body:
                total += len(chunk)
                yield chunk
        finally:
            if hasattr(body, "close"):
                body.close()
            with self.lock:
                self.bytes[prefix] += total

    def count(self, prefix: str) -> int:
        return sum(n for (p, _), n in self.requests.items() if p == prefix)


def start_server() -> tuple[Counting, str]:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    counting = Counting(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, counting, True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    return counting, f"http://{host}:{port}"


def env(code: Path, endpoint: str) -> dict[str, str]:
    return dict(os.environ, **AWS, AWS_ENDPOINT_URL=endpoint, OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(code / ".pp"), str(code), str(ROOT)]))


def rscert(code: Path, endpoint: str, args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rscert.cli", *args], env=env(code, endpoint), cwd=ROOT,
                          capture_output=True, text=True, **kw)


def certify_args(data: str, out: str, unit_size: int) -> list[str]:
    return ["certify", "--data", data, "--out", out, "--model", "tests.zoo:tiny_cnn", "--random-init",
            "--sigma", "0.5", "--n0", "10", "--n", "20", "--batch-size", "64", "--unit-size", str(unit_size),
            "--preset", "none"]


def upload(client, folder: Path, prefix: str) -> int:  # noqa: ANN001
    total = 0
    for path in sorted(folder.glob("*.tar")):
        client.upload_file(str(path), BUCKET, f"{prefix}/{path.name}")
        total += path.stat().st_size
    return total


def job(counting: Counting, code: Path, endpoint: str, data: str, out: str, unit_size: int, dataset_bytes: int,
        units: int, label: str) -> dict:
    counting.reset()
    start = time.time()
    proc = rscert(code, endpoint, certify_args(data, out, unit_size))
    wall = time.time() - start
    if proc.returncode:
        raise SystemExit(f"{label}: {proc.stderr[-3000:]}")
    prefix_data, prefix_out = data.split("/")[3], out.split("/")[3]
    row = {"job": label, "wall_s": round(wall, 1),
           "first_unit_s": round((counting.first_unit_put or start) - start, 1),
           "data_bytes_over_dataset": round(counting.bytes[prefix_data] / dataset_bytes, 3),
           "data_requests_per_unit": round(counting.count(prefix_data) / units, 2),
           "out_requests_per_unit": round(counting.count(prefix_out) / units, 2)}
    print(json.dumps(row), flush=True)
    return row


def reads(args, counting: Counting, endpoint: str, client, work: Path) -> list[dict]:  # noqa: ANN001
    write_shards(work / "reads", shards=args.shards, per_shard=args.per_shard, size=32, classes=10)
    dataset = upload(client, work / "reads", "reads")
    units = args.shards * -(-args.per_shard // args.unit_size)
    data = f"s3://{BUCKET}/reads/data-{{000000..{args.shards - 1:06d}}}.tar"
    rows = [job(counting, args.code, endpoint, data, f"s3://{BUCKET}/out-plain", args.unit_size, dataset, units,
                "no sidecar index")]
    has_index = "index" in rscert(args.code, endpoint, ["--help"]).stdout
    if has_index:
        counting.reset()
        proc = rscert(args.code, endpoint, ["index", data])
        if proc.returncode:
            raise SystemExit(proc.stderr[-2000:])
        print(json.dumps({"rscert index": "done", "bytes_over_dataset": round(counting.bytes["reads"] / dataset, 3)}))
        rows.append(job(counting, args.code, endpoint, data, f"s3://{BUCKET}/out-indexed", args.unit_size, dataset,
                        units, "sidecar index"))
    counting.reset()
    start = time.time()
    proc = rscert(args.code, endpoint, certify_args(data, f"s3://{BUCKET}/out-plain", args.unit_size))
    rows.append({"job": "no-op rerun", "wall_s": round(time.time() - start, 1),
                 "out_requests_per_unit_file": round(counting.count("out-plain") / units, 2),
                 "unit_file_requests_per_unit_file": round(counting.unit_files["out-plain"] / units, 3),
                 "other_out_requests": counting.count("out-plain") - counting.unit_files["out-plain"],
                 "data_bytes_over_dataset": round(counting.bytes["reads"] / dataset, 3)})
    print(json.dumps(rows[-1]), flush=True)
    counting.reset()
    start = time.time()
    proc = rscert(args.code, endpoint, ["analyze", f"s3://{BUCKET}/out-plain", "--radii", "0 0.25"])
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    rows.append({"job": "rscert analyze", "wall_s": round(time.time() - start, 1),
                 "out_requests_per_unit_file": round(counting.count("out-plain") / units, 2)})
    print(json.dumps(rows[-1]), flush=True)
    return rows


def first_unit(args, counting: Counting, endpoint: str, client, work: Path, shards: int) -> dict:  # noqa: ANN001
    folder = work / f"first{shards}"
    write_shards(folder, shards=shards, per_shard=args.per_shard, size=32, classes=10)
    upload(client, folder, f"first{shards}")
    data = f"s3://{BUCKET}/first{shards}/data-{{000000..{shards - 1:06d}}}.tar"
    counting.reset()
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "rscert.cli",
                             *certify_args(data, str(work / f"out-first{shards}"), args.unit_size)],
                            env=env(args.code, endpoint), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    units = work / f"out-first{shards}" / "units"
    seconds = None
    while proc.poll() is None and time.time() - start < 1800:
        if units.exists() and any(units.glob("*.parquet")):
            seconds = time.time() - start
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    row = {"job": f"first unit, {shards} shards", "first_unit_s": None if seconds is None else round(seconds, 1),
           "data_bytes_before_it_over_dataset": round(counting.bytes[f"first{shards}"] /
                                                      sum(p.stat().st_size for p in folder.glob("*.tar")), 3)}
    print(json.dumps(row), flush=True)
    return row


MEMORY_SNIPPET = r"""
import sys, time
def peak_mb():  # this process's own peak RSS (VmHWM); ru_maxrss would carry the forking parent's across exec
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) // 1024
import numpy as np
import importlib
report = importlib.import_module("rscert.run.report")  # the driver's imports (torch included): the baseline
from rscert.store.results import Store
store, fp, n = Store(sys.argv[1]), sys.argv[2], int(sys.argv[3])
base = peak_mb()
start = time.time()
try:  # after: prepare's committed() reads each file once; the summary uses what it read
    from rscert.store.tally import tally
    done = store.committed(fp)
    summary = tally(done.facts, (0.0, 0.5), np.arange(n))
except ImportError:  # before: prepare's committed(), then report's committed_units() and summarize()
    done = store.committed(fp)
    units = store.committed_units(fp)
    summary = report.summarize(store, units=units, selected=set(range(n)))
print(summary["rows"], peak_mb(), base, round(time.time() - start, 1))
"""


PLAN_SNIPPET = r"""
import inspect, sys, time
def peak_mb():  # this process's own peak RSS (VmHWM); ru_maxrss would carry the forking parent's across exec
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) // 1024
import rscert, rscert.cli, rscert.run.report, rscert.run.prepare  # the driver's imports
executor = sys.argv[4]
if executor == "ray":
    import rscert.run.ray_runner
base = peak_mb()
heavy = ",".join(m for m in ("torch", "torchvision", "ray", "pyarrow", "polars") if m in sys.modules)
from rscert.config.certify import CertifyConfig
from rscert.run.prepare import prepare
config = CertifyConfig(data=sys.argv[1], out=sys.argv[2], model="tests.zoo:tiny_cnn", random_init=True, sigma=0.5,
                       n0=10, n=20, unit_size=int(sys.argv[3]), seed=1, preset="none", executor=executor)
start = time.time()
kw = {}
if "remote_facts" in inspect.signature(prepare).parameters:  # after: the Ray task's facts (not this process's)
    from rscert.run.model_facts import ModelFacts
    facts = {"spec": "tests.zoo:tiny_cnn", "checkpoint": None, "checkpoint_sha256": None, "num_classes": None,
             "normalize": "none", "weights_sha256": "0" * 64, "weights": "random-init"}
    if executor == "ray":
        kw["remote_facts"] = lambda config, shard: ModelFacts(facts, (3, 224, 224), 1000)
job = prepare(config, log=lambda line: None, early=True, **kw)
held, inputs = [], 0
while not job.feed.exhausted:  # as the executor does: every pending unit taken into its queue
    new = job.feed.take(timeout=1.0)
    held += new
    inputs += sum(len(u.positions) for u in new)
job.feed.wait()
peak = peak_mb()
import numpy as np
from rscert.run.report import job_summary
from rscert.store.tally import RowFacts
rng = np.random.default_rng(0)
for unit in held:  # every unit commits: the facts its worker returns, kept by the driver for the summary
    n, ok = len(unit.positions), np.ones(len(unit.positions), bool)
    facts = RowFacts(np.asarray(unit.indices, np.int64), ok, rng.random(n) < 0.7, ok & False, rng.random(n))
    job.finished({"unit_id": unit.unit_id, "rows": n, "facts": facts})
summary = job_summary(job)
assert summary["rows"] == inputs
end = peak_mb()
job.close()
print(len(held), inputs, peak, end, base, round(time.time() - start, 1), heavy or "-",
      rscert.__file__)
"""


def synthetic_indexed_shards(folder: Path, shards: int, per_shard: int) -> tuple[str, int]:
    """``shards`` sparse files of ImageNet-sized samples (about 130 kB each, no bytes on disk) with sidecar
    indexes whose identity records match them by size and modification time (so planning reads no shard):
    planning at scale without writing millions of images. The spec, and the inputs."""
    from rscert.data.shard_identity import metadata

    folder.mkdir(parents=True, exist_ok=True)
    size = 133_120
    for s in range(shards):
        path = folder / f"synth-{s:06d}.tar"
        if not path.exists():
            with open(path, "wb") as fh:
                fh.truncate(size * per_shard + 1024)
        sidecar = Path(str(path) + ".rscert-index.json")
        if sidecar.exists():
            continue
        samples = [[f"ILSVRC2012_val_{s * per_shard + i:08d}", i * size, size] for i in range(per_shard)]
        record = dict(metadata(str(path)), sha256="0" * 64)
        sidecar.write_text(json.dumps({"__kind__": "rscert-shard-index-v1", "url": str(path), "nsamples": per_shard,
                                       "filesize": record["size"], "identity": record, "samples": samples},
                                      separators=(",", ":")))
    return str(folder / f"synth-{{000000..{shards - 1:06d}}}.tar"), shards * per_shard


def planning(args, work: Path, executor: str) -> dict:  # noqa: ANN001
    """The driver planning a fresh job over --plan-shards sidecar-indexed shards, every unit pending."""
    import shutil

    sys.path.insert(0, str(ROOT / ".pp"))
    spec, inputs = synthetic_indexed_shards(work / "plan_shards", args.plan_shards, args.plan_per_shard)
    out = work / f"plan_out_{executor}"
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-c", PLAN_SNIPPET, spec, str(out), str(args.plan_unit_size), executor],
                          env=env(args.code, "http://127.0.0.1:9"), capture_output=True, text=True, cwd=ROOT)
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    units, planned, rss, end, base, seconds, heavy, where = proc.stdout.split()
    row = {"job": f"driver planning ({executor} executor), {inputs} inputs in {args.plan_shards} indexed shards, "
                  f"units of {args.plan_unit_size}", "units": int(units), "inputs": int(planned),
           "peak_rss_mb": int(rss), "after_imports_rss_mb": int(base), "seconds": float(seconds),
           "peak_rss_mb_at_the_end_summary": int(end),
           "heavy_imports": heavy, "code": where}
    print(json.dumps(row), flush=True)
    return row


def memory(args, work: Path) -> dict:  # noqa: ANN001
    """Synthetic unit files (this checkout's writer; the format is the same before and after)."""
    import numpy as np
    import pyarrow.parquet as pq

    sys.path.insert(0, str(ROOT / ".pp"))
    from rscert.store.results import Store, table_from_rows

    per = args.memory_unit_size
    out = work / f"memory_{args.memory_inputs}_{per}"
    store = Store(str(out))
    store.create_folders()
    fp, rng = "f" * 64, np.random.default_rng(0)
    if not any((out / "units").glob("*.parquet")):
        for start in range(0, args.memory_inputs, per):
            rows = [{"run_id": "r", "unit_id": f"u{start}", "shard": "s", "key": f"k{i}", "index": i,
                     "label": 1, "prediction": int(rng.integers(-1, 3)), "radius": float(rng.random()),
                     "correct": bool(rng.integers(2)), "status": "ok", "n": 20, "n0": 10, "sigma": 0.5}
                    for i in range(start, min(start + per, args.memory_inputs))]
            table = table_from_rows(rows, {"rscert.fingerprint": fp, "rscert.run_id": "r",
                                           "rscert.unit_id": f"u{start}"})
            pq.write_table(table, out / "units" / f"u{start:09d}.parquet", compression="zstd")
    proc = subprocess.run([sys.executable, "-c", MEMORY_SNIPPET, str(out), fp, str(args.memory_inputs)],
                          env=env(args.code, "http://127.0.0.1:9"), capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    rows, rss, base, seconds = proc.stdout.split()
    row = {"job": f"driver bookkeeping, {args.memory_inputs} inputs in {-(-args.memory_inputs // per)} unit files",
           "rows": int(rows), "peak_rss_mb": int(rss), "after_imports_rss_mb": int(base), "seconds": float(seconds)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--code", type=Path, default=ROOT, help="checkout whose rscert runs (default: this one)")
    ap.add_argument("--shards", type=int, default=64)
    ap.add_argument("--per-shard", type=int, default=100, help="samples per shard (ImageNet val: 781)")
    ap.add_argument("--unit-size", type=int, default=4, help="4 makes 25 units a shard, as 32 does at 781")
    ap.add_argument("--first-shards", default="64,640", help="shard counts for the time to the first unit")
    ap.add_argument("--memory-inputs", type=int, default=500_000)
    ap.add_argument("--memory-unit-size", type=int, default=32, help="rows per unit file of the memory part")
    ap.add_argument("--plan-shards", type=int, default=6400, help="shards of the planning part (6400 x 782: 5M)")
    ap.add_argument("--plan-per-shard", type=int, default=782)
    ap.add_argument("--plan-unit-size", type=int, default=32)
    ap.add_argument("--plan-executors", default="ray,local", help="whose driver the planning part measures")
    ap.add_argument("--parts", default="reads,first,memory,plan")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (kept: the memory files are reused)")
    args = ap.parse_args()
    args.code = args.code.resolve()
    work = args.work or Path(tempfile.mkdtemp(prefix="scale_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    results: list[dict] = []
    counting, endpoint = start_server()
    os.environ.update(AWS, AWS_ENDPOINT_URL=endpoint)
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    if "reads" in parts:
        results += reads(args, counting, endpoint, client, work)
    if "first" in parts:
        for shards in [int(s) for s in args.first_shards.split(",")]:
            results.append(first_unit(args, counting, endpoint, client, work, shards))
    if "memory" in parts:
        results.append(memory(args, work))
    if "plan" in parts:
        for executor in args.plan_executors.split(","):
            results.append(planning(args, work, executor))
    print(json.dumps({"code": str(args.code), "results": results}, indent=1))


if __name__ == "__main__":
    main()
