"""--noise discrete-gaussian against the default gaussian noise: sampling cost and radii (issue 18.1).

Two measurements, each printing ratios taken in this one run on this one machine:

* ``cost`` -- per batch, the noisy inputs alone (gaussian: Philox + float32 Box-Muller, times sigma, plus x;
  discrete: Philox + the inverse-CDF table, plus the levels k, then fl32((k + m) / 255)), and the sampler
  end to end (:meth:`rscert.sampling.sampler.Sampler.counts`) with a model, both modes interleaved
  over --repeats, medians reported:

      python bench/discrete_bench.py cost --model small_cnn --size 8 --channels 1 --batch 2500
      python bench/discrete_bench.py cost --model resnet18 --size 224 --batch 32 --samples 64

* ``radii`` -- the digits demo models (rscert demo's data and training recipe, trained here if absent under
  --out) certified on every test digit in both modes (local executor, N0 = 100, N = --n, alpha = 0.001,
  seed 0), and per sigma: the ACR of each mode, their ratio, the mean per-input radius difference with
  its standard error, and the certified accuracy at the demo's radii:

      python bench/discrete_bench.py radii --out /tmp/discrete-radii --n 10000
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from rscert.sampling import discrete_noise
from rscert.sampling.noise import normal_, stream
from rscert.sampling.sampler import Sampler, SamplerOptions, default_device
from rscert.stats import discrete_gaussian

MODES = ("gaussian", "discrete-gaussian")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _clock(fn, device: torch.device) -> float:  # noqa: ANN001
    fn()
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def noisy_batch_costs(shape: tuple[int, ...], batch: int, sigma: float, device: torch.device) -> dict[str, float]:
    """Seconds to make one batch of noisy inputs in each mode (what the sampler does before the forward)."""
    key = stream(0, "bench", "estimation")
    x = (torch.randint(0, 256, shape, dtype=torch.int32).float() / 255).to(device)
    out = torch.empty((batch, *shape), device=device)
    levels = discrete_noise.lattice_levels(x)
    table = discrete_gaussian.table(sigma)

    def gaussian() -> None:
        normal_(out, key, 0)
        out.mul_(sigma).add_(x)

    def discrete() -> None:
        discrete_noise.noisy_(out, levels, key, 0, table)

    return {"gaussian": _clock(gaussian, device), "discrete-gaussian": _clock(discrete, device)}


def sampler_rate(model: torch.nn.Module, x: torch.Tensor, noise: str, batch: int, samples: int, sigma: float,
                 device: torch.device) -> float:
    sampler = Sampler(model, SamplerOptions(batch_size=batch), device=device, noise=noise)
    sampler.counts(x, ["warm"], sigma, batch, 0, "estimation")
    _sync(device)
    start = time.perf_counter()
    sampler.counts(x, ["timed"], sigma, samples, 0, "estimation")
    _sync(device)
    return samples / (time.perf_counter() - start)


def cost(args: argparse.Namespace) -> None:
    from rscert.models.load import load_model

    device = torch.device(args.device) if args.device else default_device()
    shape = (args.channels, args.size, args.size)
    model = load_model(args.model, num_classes=args.num_classes, random_init=True).model.eval().to(device)
    x = (torch.randint(0, 256, (1, *shape)).float() / 255)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; model {args.model} at {shape}; batch {args.batch}; "
          f"{args.samples} samples; sigma {args.sigma}; {args.repeats} interleaved repeats (medians)")
    noisy: dict[str, list[float]] = {m: [] for m in MODES}
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(args.repeats):
        for mode, secs in noisy_batch_costs(shape, args.batch, args.sigma, device).items():
            noisy[mode].append(secs)
        for mode in MODES:
            rates[mode].append(sampler_rate(model, x, mode, args.batch, args.samples, args.sigma, device))
    med = {m: statistics.median(noisy[m]) for m in MODES}
    rate = {m: statistics.median(rates[m]) for m in MODES}
    print(f"{'mode':<20}{'noisy batch s':>15}{'x gaussian':>12}{'samples/s':>12}{'x gaussian':>12}")
    for mode in MODES:
        print(f"{mode:<20}{med[mode]:>15.5f}{med[mode] / med['gaussian']:>12.3f}{rate[mode]:>12.1f}"
              f"{rate[mode] / rate['gaussian']:>12.3f}")


def radii(args: argparse.Namespace) -> None:
    import polars as pl

    from rscert.analysis.result import TABLE_RADII
    from rscert.config import CertifyConfig
    from rscert.demo import DATASET, SIGMAS, write_digits
    from rscert.run.local import run_local
    from rscert.run.prepare import prepare
    from rscert.train import TrainConfig, train

    RADII = TABLE_RADII[DATASET]  # noqa: N806 - the demo's table
    root = Path(args.out).resolve()
    train_spec, test_spec = write_digits(root / "data")
    print(f"digits test set, N0 = 100, N = {args.n:,}, alpha = 0.001, seed 0; CPU x{torch.get_num_threads()}")
    for sigma in SIGMAS:
        folder = root / "models" / f"sigma_{sigma:.2f}"
        train(TrainConfig(data=train_spec, model="small_cnn", num_classes=10, out=str(folder), sigma=sigma,
                          epochs=args.epochs, batch_size=64, optimizer="sgd", lr=0.05, schedule="cosine", seed=0),
              log=lambda m: None)
        frames, seconds = {}, {}
        for noise in MODES:
            target = root / noise / f"sigma_{sigma:.2f}"
            config = CertifyConfig(data=test_spec, out=str(target), checkpoint=str(folder / "checkpoint.pt"),
                                   sigma=sigma, n0=100, n=args.n, alpha=0.001, batch_size=2500, unit_size=50,
                                   dataset="digits", split="test", executor="local", seed=0, noise=noise)
            job = prepare(config, log=lambda m: None)
            start = time.perf_counter()
            try:
                run_local(job)
            finally:
                job.close()
            seconds[noise] = time.perf_counter() - start
            frames[noise] = pl.read_parquet(f"{target}/**/*.parquet").sort("index")
        g, d = frames["gaussian"], frames["discrete-gaussian"]
        ok_g, ok_d = (f["correct"].fill_null(False).to_numpy() for f in (g, d))
        rg = np.where(ok_g, g["radius"].fill_null(0).to_numpy(), 0.0)  # 0 unless certified and correct
        rd = np.where(ok_d, d["radius"].fill_null(0).to_numpy(), 0.0)
        diff = rd - rg
        acr_g, acr_d = rg.mean(), rd.mean()
        ratio = seconds["discrete-gaussian"] / seconds["gaussian"]
        print(f"\nsigma {sigma:.2f}: {g.height} test digits; certify time gaussian {seconds['gaussian']:.1f} s, "
              f"discrete {seconds['discrete-gaussian']:.1f} s (x{ratio:.3f})")
        print(f"  ACR gaussian {acr_g:.4f}, discrete {acr_d:.4f}: ratio {acr_d / acr_g:.4f}; "
              f"mean radius difference {diff.mean():+.5f} +- {diff.std(ddof=1) / np.sqrt(diff.size):.5f} (s.e.)")
        same = int((g["prediction"] == d["prediction"]).sum())
        cells = "  ".join(f"{r:g}: {np.mean(ok_g & (rg >= r)):.3f}/{np.mean(ok_d & (rd >= r)):.3f}" for r in RADII)
        print(f"  same prediction on {same} of {g.height}; certified accuracy (gaussian/discrete) at r = {cells}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cost", help="noisy-batch and sampler cost of each mode")
    c.add_argument("--model", default="small_cnn")
    c.add_argument("--num-classes", type=int, default=10)
    c.add_argument("--size", type=int, default=8)
    c.add_argument("--channels", type=int, default=1)
    c.add_argument("--batch", type=int, default=2500)
    c.add_argument("--samples", type=int, default=50_000)
    c.add_argument("--sigma", type=float, default=0.25)
    c.add_argument("--device", default=None)
    c.add_argument("--repeats", type=int, default=5)
    r = sub.add_parser("radii", help="ACR and radii of each mode on the digits demo models")
    r.add_argument("--out", default="/tmp/rscert-discrete-radii")
    r.add_argument("--n", type=int, default=10_000)
    r.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args(argv)
    cost(args) if args.what == "cost" else radii(args)


if __name__ == "__main__":
    main()
