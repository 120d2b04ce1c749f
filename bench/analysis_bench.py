"""Analysis at scale: 10 million result rows in 1,000 Parquet files, 10 configurations.

Writes the data once (rscert's schema, realistic value distributions), then runs the analysis
(summary at the default radii, curves on the 0.01 grid, envelope) in a fresh subprocess and reports
its wall time and peak resident memory (ru_maxrss of that subprocess).

    python bench/analysis_bench.py [--rows 10000000] [--files 1000] [--configs 10] [--folder DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.stats import norm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rscert.store.results import SCHEMA  # noqa: E402


def write_data(folder: Path, rows: int, files: int, configs: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    per_file = rows // files
    sigmas = [0.12, 0.25, 0.5, 1.0, 0.25, 0.5, 1.0, 0.12, 0.5, 1.0]
    for f in range(files):
        cfg = f % configs
        sigma = sigmas[cfg % len(sigmas)]
        count_top = rng.integers(40_000, 100_001, per_file)
        p_lower = np.clip(count_top / 100_000 - 0.003, 0, 1)
        radius = np.where(p_lower >= 0.5, sigma * norm.ppf(np.clip(p_lower, 0.5, 1 - 1e-12)), 0.0)
        label = rng.integers(0, 1000, per_file)
        top = np.where(rng.random(per_file) < 0.7, label, rng.integers(0, 1000, per_file))
        prediction = np.where(p_lower >= 0.5, top, -1)
        n = per_file
        columns = {
            "run_id": pa.array([f"run-{cfg}"] * n), "unit_id": pa.array([f"u{f}"] * n),
            "shard": pa.array([f"shard-{f}.tar"] * n), "key": pa.array([f"k{f}_{i}" for i in range(n)]),
            "index": pa.array(np.arange(f * n, (f + 1) * n)), "label": pa.array(label),
            "prediction": pa.array(prediction), "top_class": pa.array(top), "radius": pa.array(radius),
            "correct": pa.array(prediction == label), "n0": pa.array(np.full(n, 100)),
            "n": pa.array(np.full(n, 100_000)), "count_select": pa.array(np.full(n, 90)),
            "count_top": pa.array(count_top), "p_lower": pa.array(p_lower), "alpha": pa.array(np.full(n, 0.001)),
            "sigma": pa.array(np.full(n, sigma)), "noise": pa.array(["gaussian"] * n),
            "seed": pa.array(np.zeros(n, dtype=np.int64)), "num_classes": pa.array(np.full(n, 1000)),
            "model": pa.array([f"resnet50-{cfg}"] * n), "checkpoint_sha256": pa.array([f"{cfg:064x}"] * n),
            "dataset": pa.array(["imagenet"] * n), "split": pa.array(["val"] * n),
            "source": pa.nulls(n, pa.string()), "mode": pa.array(["certify"] * n),
            "train_sigma": pa.array(np.full(n, sigma)), "seconds": pa.array(rng.random(n) + 100),
            "status": pa.array(["ok"] * n), "error": pa.nulls(n, pa.string()),
            "n_max": pa.array(np.full(n, 100_000)), "sampling": pa.array(["fixed"] * n),
            "stop_reason": pa.array(["cap"] * n), "precision": pa.array(["bf16"] * n),
            "clamp": pa.array(np.zeros(n, dtype=bool)), "preset": pa.array(["imagenet"] * n),
        }
        columns.update({f.name: pa.nulls(n, f.type) for f in SCHEMA if f.name not in columns})
        table = pa.Table.from_pydict(columns, schema=SCHEMA)
        pq.write_table(table, folder / "units" / f"unit-{f:05d}.parquet", compression="zstd")


CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from rscert.analysis.aggregate import analyze
t = time.perf_counter()
result = analyze([{folder!r}])
elapsed = time.perf_counter() - t
print(json.dumps({{"seconds": elapsed, "configs": result.summary.height, "rows": int(result.summary["inputs"].sum()),
                  "curve_points": result.curves.height,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--configs", type=int, default=10)
    ap.add_argument("--folder", default=None, help="reuse or keep the data here (default: a temporary folder)")
    args = ap.parse_args()
    tmp = None if args.folder else tempfile.TemporaryDirectory()
    folder = Path(args.folder or tmp.name)
    if not (folder / "units").exists() or len(list((folder / "units").glob("*.parquet"))) != args.files:
        (folder / "units").mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        write_data(folder, args.rows, args.files, args.configs)
        print(f"wrote {args.rows:,} rows in {args.files} files in {time.perf_counter() - t:.1f}s")
    out = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), folder=str(folder))],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"analysis of {result['rows']:,} rows, {result['configs']} configurations: {result['seconds']:.2f} s, "
          f"peak RSS {result['peak_rss_mb']:.0f} MB ({result['curve_points']} curve points)")
    met = result["seconds"] < 10 and result["peak_rss_mb"] < 2048
    print(f"targets: < 10 s and < 2048 MB -> {'met' if met else 'MISSED'}")

    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
