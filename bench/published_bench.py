"""Whole-process wall time: the published CERTIFY script against ``rscert certify`` on a small job.

    python bench/published_bench.py /path/to/published-smoothing/code [--n 60000] [--runs 3]

The published code (certify.py + core.py of Cohen et al.'s repository) is *not* part of rscert;
this script takes its folder as an argument and runs ``certify.py`` unmodified in a subprocess. A
``sitecustomize`` module, written to a temporary folder and put on that subprocess's PYTHONPATH,
patches at run time only what it needs to run here:

* off-GPU: ``Tensor.cuda`` / ``Module.cuda`` return the object itself, ``randn_like(device='cuda')``
  draws on the CPU, ``setGPU`` is an empty module;
* current scipy: ``scipy.stats.binom_test`` (removed) is provided from ``binomtest`` (core.py
  imports it; CERTIFY does not call it);
* the data and model: ``datasets.get_dataset('cifar10', 'test')`` returns this benchmark's images,
  ``architectures.get_architecture(ARCH, 'cifar10')`` the tiny CNN below behind the
  published CIFAR-10 normalisation layer. Everything else of the published modules is imported and
  runs as it is (torchvision included).

Both sides certify the same 6 images (32x32 RGB PNGs in one WebDataset shard for rscert, the same
decoded tensors for the published script), with the same weights (one checkpoint in the published
``{"arch", "state_dict"}`` format that both load), sigma, N0, N, alpha and batch size, on the CPU,
each in a fresh process. Runs alternate (published, rscert, published, ...); the medians of
``--runs`` runs and their ratio are printed, with a start-up figure (N0 = N = 1) for each side.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCH = "bench.published_bench:tiny_cnn"  # an rscert module:factory spec; the shim knows it too


def tiny_cnn(num_classes: int = 10):
    """The benchmark's base classifier: one 3x3 convolution (8 channels), 4x4 max pooling, a linear
    layer. Small enough that per-call overheads, not the forward pass, decide the race."""
    from torch import nn

    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(),
                         nn.Linear(8 * 8 * 8, num_classes))


SITECUSTOMIZE = r'''
import os, sys, types
code = os.environ["BENCH_PUBLISHED_CODE"]
sys.path.insert(0, code)
sys.path.append(os.environ["BENCH_ROOT"])

import torch
torch.Tensor.cuda = lambda self, *a, **k: self
torch.nn.Module.cuda = lambda self, *a, **k: self
_randn_like = torch.randn_like
def _randn_like_cpu(t, *a, **k):
    if str(k.get("device", "")).startswith("cuda"):
        k["device"] = "cpu"
    return _randn_like(t, *a, **k)
torch.randn_like = _randn_like_cpu

import scipy.stats
if not hasattr(scipy.stats, "binom_test"):
    scipy.stats.binom_test = lambda x, n=None, p=0.5, alternative="two-sided": scipy.stats.binomtest(
        int(x), int(n), p, alternative=alternative).pvalue

sys.modules["setGPU"] = types.ModuleType("setGPU")

import datasets
_get_dataset = datasets.get_dataset
def get_dataset(name, split):
    if name == "cifar10" and split == "test":
        return torch.load(os.environ["BENCH_DATA"])
    return _get_dataset(name, split)
datasets.get_dataset = get_dataset

import architectures
_get_architecture = architectures.get_architecture
def get_architecture(arch, dataset):
    if arch == "bench.published_bench:tiny_cnn":
        from bench.published_bench import tiny_cnn
        return torch.nn.Sequential(datasets.get_normalize_layer(dataset), tiny_cnn(10))
    return _get_architecture(arch, dataset)
architectures.get_architecture = get_architecture
'''


def make_inputs(folder: Path, count: int, seed: int) -> tuple[Path, Path, Path]:
    """The shard, the decoded tensors (for the published side) and the checkpoint."""
    import io

    import numpy as np
    import torch
    from PIL import Image
    from torch import nn
    from webdataset import TarWriter

    rng = np.random.default_rng(seed)
    shard, tensors = folder / "bench-000000.tar", []
    with TarWriter(str(shard)) as sink:
        for i in range(count):
            pixels = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
            label = int(rng.integers(10))
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            sink.write({"__key__": f"{i:06d}", "png": buf.getvalue(), "cls": str(label).encode()})
            tensors.append((torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0, label))
    data = folder / "bench.pt"
    torch.save(tensors, data)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Identity(), tiny_cnn(10))  # the published layout: Sequential(normalize, net)
    checkpoint = folder / "checkpoint.pth.tar"
    torch.save({"arch": ARCH, "num_classes": 10, "normalize": "cifar", "state_dict": model.state_dict()}, checkpoint)
    return shard, data, checkpoint


CPU: dict[str, list[float]] = {"published": [], "rscert": []}


def _timed(cmd: list[str], env: dict[str, str], cwd: Path, side: str | None = None) -> float:
    """Wall time of the whole process; its CPU time (user + system) goes to CPU[side]: on a shared
    machine the CPU time is the steadier figure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{result.stdout}\n{result.stderr}")
    if side:
        CPU[side].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("published", type=Path, help="folder with the published certify.py and core.py")
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.published / "certify.py").is_file() or not (args.published / "core.py").is_file():
        raise SystemExit(f"{args.published}: expected the published certify.py and core.py there")

    with tempfile.TemporaryDirectory(prefix="rscert-published-bench-") as tmp:
        folder = Path(tmp)
        shard, data, checkpoint = make_inputs(folder, args.images, args.seed)
        shim = folder / "shim"
        shim.mkdir()
        (shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
        base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
        published_env = {**base, "PYTHONPATH": str(shim), "BENCH_PUBLISHED_CODE": str(args.published.resolve()),
                         "BENCH_ROOT": str(ROOT), "BENCH_DATA": str(data)}
        rscert_env = {**base, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}

        def published(n0: int, n: int, tag: str) -> list[str]:
            return [sys.executable, str(args.published / "certify.py"), "cifar10", str(checkpoint), str(args.sigma),
                    str(folder / f"published-{tag}.tsv"), "--batch", str(args.batch), "--N0", str(n0), "--N",
                    str(n), "--alpha", str(args.alpha)]

        def rscert(n0: int, n: int, tag: str) -> list[str]:
            return [sys.executable, "-m", "rscert.cli", "certify", "--data", str(shard), "--checkpoint",
                    str(checkpoint), "--sigma", str(args.sigma), "--n0", str(n0), "--n", str(n), "--alpha",
                    str(args.alpha), "--batch-size", str(args.batch), "--out", str(folder / f"rscert-{tag}"),
                    "--unit-size", str(args.images), "--device", "cpu"]

        times: dict[str, list[float]] = {"published": [], "rscert": []}
        startup = {"published": _timed(published(1, 1, "startup"), published_env, args.published),
                   "rscert": _timed(rscert(1, 1, "startup"), rscert_env, ROOT)}
        for run in range(args.runs):
            times["published"].append(_timed(published(args.n0, args.n, str(run)), published_env, args.published,
                                             "published"))
            times["rscert"].append(_timed(rscert(args.n0, args.n, str(run)), rscert_env, ROOT, "rscert"))
            print(f"run {run + 1}: published {times['published'][-1]:.2f} s, rscert {times['rscert'][-1]:.2f} s",
                  flush=True)

        import polars as pl

        ours = pl.read_parquet(f"{folder}/rscert-0/units/*.parquet").sort("index")
        theirs = pl.read_csv(folder / "published-0.tsv", separator="\t")
        agree = sum(int(a) == int(b) for a, b in zip(ours["prediction"], theirs["predict"], strict=True))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(json.dumps({"images": args.images, "n0": args.n0, "n": args.n, "batch": args.batch,
                          "sigma": args.sigma, "runs": args.runs, "threads": os.cpu_count()}))
        print(f"start-up (N0 = N = 1): published {startup['published']:.2f} s, rscert {startup['rscert']:.2f} s")
        print(f"median whole-process wall time: published {med['published']:.2f} s, rscert {med['rscert']:.2f} s")
        print(f"published / rscert = {med['published'] / med['rscert']:.2f} (>= 1: rscert at least as fast)")
        cpu = {k: statistics.median(v) for k, v in CPU.items()}
        print(f"median CPU time (user + system): published {cpu['published']:.2f} s, rscert {cpu['rscert']:.2f} s; "
              f"published / rscert = {cpu['published'] / cpu['rscert']:.2f}")
        print(f"same prediction on {agree} of {args.images} images (different noise draws; radii differ)")


if __name__ == "__main__":
    main()
