"""The device check's figures in a few lines (bench/gpu_check.sh, last step): every row that
bench/sampler_bench.py and bench/certify_bench.py appended to the JSON-lines files in a folder."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def main(folder: str) -> None:
    for path in sorted(Path(folder).glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not rows:
            continue
        first = rows[0]
        print(f"-- {path.name}: {first.get('device')}, torch {first.get('torch')}, {first.get('model')}")
        for r in rows:
            if "ratio_bare_over_rscert" in r:  # certify_bench
                print(f"certify e2e {r['precision']} batch {r['batch']} compile_noise={r.get('compile_noise')}: "
                      f"{r['seconds_per_input']:.2f} s/input, bare {r['bare_seconds_per_input']:.2f} s/input, "
                      f"ratio {r['ratio_bare_over_rscert']:.3f}, command {r['wall_s']:.0f} s for {r['inputs']} inputs")
            elif "samples_per_s" in r:
                print(f"b{r['batch']:<5} cl={int(r['channels_last'])} c={int(r['compile'])} {r['what']:<14}"
                      f"{r['precision']:<5}{_fmt(r['samples_per_s'], '10.1f')}/s  x bare {_fmt(r['x_bare'], '.3f')}"
                      f"  x ref {_fmt(r['x_ref'], '.2f')}")
            elif "seconds_per_batch" in r:
                shares = " ".join(f"{k[13:]} {_fmt(v, '.3f')}" for k, v in r.items() if k.startswith("share_of_fwd_"))
                print(f"b{r['batch']:<5} noise {r['what']:<18}{r['seconds_per_batch'] * 1e3:8.2f} ms/batch; "
                      f"share of bare fwd: {shares}")


if __name__ == "__main__":
    main(sys.argv[1])
