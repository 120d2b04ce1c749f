"""Noise families: the sampling cost of each against the Gaussian path, and certified accuracy per family.

Two parts, each printing figures measured in this one run:

  * ``--cost``: seconds per batch of each family's generator (the sampler's path: numba pairs on CPU,
    and the torch-only path), and of :meth:`Sampler.counts` end to end with a small CNN, each as a
    ratio to the Gaussian's, medians of interleaved repeats;
  * ``--certify``: the demo's digits (real scikit-learn digits as WebDataset shards), one small CNN
    trained per family and sigma with ``rscert train --noise`` (the same recipe as the demo), CERTIFY
    of the test digits with that family's noise in its default norm (local executor), and the
    certified-accuracy table per family (Markdown, as rscert analyze writes it).

    python bench/families_bench.py --cost --repeats 5
    python bench/families_bench.py --certify --out /tmp/families --n 10000 --epochs 30 --skip 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rscert.sampling import noise  # noqa: E402
from rscert.sampling.draws import DRAWS  # noqa: E402
from rscert.sampling.noise import draw_, stream  # noqa: E402
from rscert.sampling.sampler import Sampler, SamplerOptions  # noqa: E402
from rscert.stats.families import FAMILIES  # noqa: E402

SIGMAS = (0.25, 0.50)
CONTINUOUS = ("gaussian", *DRAWS)
"""The families drawn from Philox blocks by rscert.sampling.draws (discrete-gaussian has its own bench)."""


def _clock(fn, calls: int = 5) -> float:  # noqa: ANN001
    """The fastest of ``calls`` timed calls after a warm one (numba compile, allocations): on a shared
    machine the minimum is the least disturbed measure of the work itself."""
    fn()
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def cost(args: argparse.Namespace) -> None:
    from rscert.models.archs import SmallCNN

    shape = (3, args.size, args.size)
    out = torch.empty((args.batch, *shape))
    key = stream(0, "bench", "estimation")
    model = SmallCNN(10, in_channels=3) if args.model == "small_cnn" else None
    x = torch.rand(4, *shape)
    times: dict[tuple[str, str], list[float]] = {}
    samplers = {name: Sampler(model, SamplerOptions(batch_size=args.batch), device="cpu", noise=name)
                for name in CONTINUOUS} if model is not None else {}
    saved = noise._CPU_KERNEL_MIN
    for rep in range(args.repeats):  # interleaved, the families' order rotated: drift hits every family alike
        order = CONTINUOUS[rep % len(CONTINUOUS):] + CONTINUOUS[:rep % len(CONTINUOUS)]
        for name in order:
            times.setdefault((name, "generator"), []).append(_clock(lambda n=name: draw_(out, key, 0, n)))
        noise._CPU_KERNEL_MIN = 1 << 62  # the words from torch integer ops (the path of other devices)
        for name in order:
            times.setdefault((name, "torch-only"), []).append(_clock(lambda n=name: draw_(out, key, 0, n)))
        noise._CPU_KERNEL_MIN = saved
        for name, sampler in ((n, samplers[n]) for n in order if n in samplers):
            times.setdefault((name, "sampler"), []).append(
                _clock(lambda s=sampler: s.counts(x, ["0", "1", "2", "3"], 0.5, args.batch, 0, "estimation"), 2))
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"CPU x{torch.get_num_threads()} threads; torch {torch.__version__}; batch {args.batch} at "
          f"3x{args.size}x{args.size}; sampler: {args.model}, 4 inputs x {args.batch} samples; "
          f"per variant the fastest of 5 calls (sampler: 2), median over {args.repeats} interleaved repeats")
    parts = sorted({p for _, p in med})
    print(f"{'family':<10}" + "".join(f"{p + ' s':>16}{'x gauss':>9}" for p in parts))
    for name in CONTINUOUS:
        cells = "".join(f"{med[name, p]:>16.4f}{med[name, p] / med['gaussian', p]:>9.2f}" for p in parts)
        print(f"{name:<10}{cells}")


def certify_tables(args: argparse.Namespace) -> None:
    from rscert.analysis.aggregate import analyze
    from rscert.analysis.tables import markdown_table
    from rscert.config.certify import CertifyConfig
    from rscert.config.train import TrainConfig
    from rscert.demo import DATASET, write_digits
    from rscert.run.local import run_local
    from rscert.run.prepare import prepare
    from rscert.train import train

    root = Path(args.out).resolve()
    train_spec, test_spec = write_digits(root / "data")
    radii = [float(r) for r in args.radii.split()]
    for name in CONTINUOUS:
        folders = []
        started = time.perf_counter()
        for sigma in SIGMAS:
            model_dir = root / "models" / f"{name}_sigma_{sigma:.2f}"
            train(TrainConfig(data=train_spec, model="small_cnn", num_classes=10, out=str(model_dir), sigma=sigma,
                              noise=name, epochs=args.epochs, batch_size=64, optimizer="sgd", lr=0.05,
                              schedule="cosine", seed=0), log=lambda m: None)
            target = root / "certify" / name / f"sigma_{sigma:.2f}"
            config = CertifyConfig(data=test_spec, out=str(target), checkpoint=str(model_dir / "checkpoint.pt"),
                                   sigma=sigma, noise=name, n0=100, n=args.n, alpha=0.001, batch_size=2500,
                                   unit_size=50, skip=args.skip, dataset=DATASET, split="test", executor="local",
                                   seed=0)
            job = prepare(config, log=lambda m: None)
            try:
                run_local(job)
            finally:
                job.close()
            folders.append(str(target))
        result = analyze(folders, radii=radii)
        norm = FAMILIES[name].default_norm
        print(f"\n### {name} noise, {norm} radii (trained and certified at each sigma; N = {args.n:,}, "
              f"alpha = 0.001, 1 in {args.skip} test digits; {time.perf_counter() - started:.0f} s)\n", flush=True)
        print(markdown_table(result))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--cost", action="store_true", help="sampling cost per family against the Gaussian")
    ap.add_argument("--certify", action="store_true", help="certified-accuracy tables per family on the digits")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=400)
    ap.add_argument("--model", default="small_cnn", help="small_cnn, or none for the generator only")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="families-bench")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--skip", type=int, default=1, help="certify every k-th test digit")
    ap.add_argument("--radii", default="0 0.25 0.5 0.75 1 1.25")
    args = ap.parse_args(argv)
    if not (args.cost or args.certify):
        ap.error("give --cost, --certify or both")
    if args.cost:
        cost(args)
    if args.certify:
        certify_tables(args)


if __name__ == "__main__":
    main()
