"""End to end on one device: ``rscert certify`` in this process against the model's bare forward pass.

Writes --inputs random JPEGs of --height x --width pixels (ImageNet's usual 375 x 500 by default) with
labels into one WebDataset shard, runs ``rscert certify`` on it (local executor: this process) with a
randomly initialised --model (speed only: its certificates mean nothing), preset imagenet (resize 256,
center crop 224), N0 and N, then times the bare forward pass of the same architecture at the same batch
size, precision and memory format (bench/sampler_bench.py's ``bare_forward``), with cuDNN's autotuner as
rscert leaves it (off; --cudnn-benchmark turns it on for both). Prints, all from this run:

* the command's wall time (model load, decoding, warm-up and commits included);
* seconds per input: the rows' own ``seconds`` (each call's sampling wall time shared among its inputs);
* the bare forward's seconds for the same N0 + N samples, and the ratio bare / rscert (1.0: rscert runs
  at the model's own speed).

    python bench/certify_bench.py --model resnet50 --inputs 4 --n 100000 --batch 1024 --precision bf16 \\
        --channels-last                                                                   # GPU
    python bench/certify_bench.py --model resnet18 --inputs 2 --n0 10 --n 50 --batch 32   # CPU, tiny
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.sampler_bench import bare_forward  # noqa: E402
from rscert.cli import main as rscert_main  # noqa: E402
from rscert.models.load import load_model  # noqa: E402
from rscert.sampling.sampler import default_device  # noqa: E402


def write_shard(path: Path, inputs: int, height: int, width: int, classes: int = 1000, seed: int = 0) -> None:
    """One WebDataset shard of ``inputs`` random RGB JPEGs (quality 90) with ``cls`` labels."""
    from webdataset import TarWriter

    rng = np.random.default_rng(seed)
    with TarWriter(str(path)) as sink:
        for i in range(inputs):
            pixels = (rng.random((height, width, 3)) * 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
            sink.write({"__key__": f"img{i:05d}", "jpg": buf.getvalue(),
                        "cls": str(int(rng.integers(classes))).encode()})


def read_rows(out: Path) -> list[dict]:
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for path in sorted(out.rglob("*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--inputs", type=int, default=4)
    ap.add_argument("--height", type=int, default=375)
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--sigma", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--precision", default="bf16" if torch.cuda.is_available() else "fp32")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--compile-noise", action="store_true", help="rscert's --compile-noise (the compiled generator)")
    ap.add_argument("--sampling", default="fixed", choices=["fixed", "sequential"])
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="torch.backends.cudnn.benchmark on, for the command and the bare forward alike "
                         "(rscert itself leaves it off)")
    ap.add_argument("--work", default=None, help="folder for the shard and the results (default: a temporary one)")
    ap.add_argument("--json", default=None, help="append the figures as one JSON object to this file")
    args = ap.parse_args(argv)

    device = default_device()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        shard, out = work / "bench-000000.tar", work / "out"
        write_shard(shard, args.inputs, args.height, args.width)
        cmd = ["certify", "--data", str(shard), "--out", str(out), "--model", args.model, "--random-init",
               "--preset", "imagenet", "--sigma", str(args.sigma), "--n0", str(args.n0), "--n", str(args.n),
               "--batch-size", str(args.batch), "--precision", args.precision, "--sampling", args.sampling,
               "--unit-size", str(args.inputs), "--executor", "local",
               "--channels-last" if args.channels_last else "--no-channels-last",
               "--compile" if args.compile else "--no-compile",
               "--compile-noise" if args.compile_noise else "--no-compile-noise"]
        print("rscert " + " ".join(cmd), flush=True)
        start = time.perf_counter()
        code = rscert_main(cmd)
        wall = time.perf_counter() - start
        rows = read_rows(out)
    ok = [r for r in rows if r.get("error") is None]
    if code != 0 or len(ok) != args.inputs:
        print(f"certify exited {code} with {len(ok)} of {args.inputs} rows certified: {rows}", file=sys.stderr)
        return 1
    per_input = float(np.mean([r["seconds"] for r in ok]))
    samples = [int(r["n"]) + args.n0 for r in ok]

    model = load_model(args.model, num_classes=1000, random_init=True).model.eval().to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        model = torch.compile(model)
    x = torch.rand(1, 3, 224, 224)
    steps = max(2, min(20, (args.n0 + args.n) // args.batch))
    bare_forward(model, x, args.batch, args.batch, device, args.precision, args.channels_last)  # warm-up
    rate = bare_forward(model, x, args.batch, steps * args.batch, device, args.precision, args.channels_last)
    bare_per_input = float(np.mean(samples)) / rate
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    figures = {"device": name, "torch": torch.__version__, "model": args.model, "inputs": args.inputs,
               "image": f"{args.height}x{args.width} JPEG", "n0": args.n0, "n": args.n, "batch": args.batch,
               "precision": args.precision, "channels_last": args.channels_last, "compile": args.compile,
               "compile_noise": args.compile_noise, "cudnn_benchmark": args.cudnn_benchmark,
               "sampling": args.sampling, "wall_s": wall, "seconds_per_input": per_input,
               "bare_samples_per_s": rate, "bare_seconds_per_input": bare_per_input,
               "ratio_bare_over_rscert": bare_per_input / per_input}
    print(f"device: {name}; torch {torch.__version__}; {args.model}, {args.inputs} inputs of "
          f"{args.height}x{args.width} JPEG, N0 = {args.n0}, N = {args.n}, batch {args.batch}, {args.precision}, "
          f"channels_last={args.channels_last}, compile={args.compile}, compile_noise={args.compile_noise}, "
          f"{args.sampling} sampling")
    print(f"rscert certify: {wall:.1f} s wall for the command; {per_input:.2f} s per input (rows' seconds)")
    print(f"bare forward:   {rate:.1f} samples/s; {bare_per_input:.2f} s for the N0 + N samples of an input")
    print(f"ratio bare / rscert per input: {bare_per_input / per_input:.3f}")
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(figures) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
