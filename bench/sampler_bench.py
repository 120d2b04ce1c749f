"""Sampler throughput against its ceiling and against the paper's straightforward loop.

Prints samples per second, all measured in this one run on one device, for:
  * bare      -- the model's forward pass alone on a batch already on the device (the ceiling),
                 at the same batch size and precision;
  * paper     -- a straightforward implementation of CERTIFY's sampling loop (Cohen et al. 2019):
                 fp32, ``x.repeat`` + ``randn_like`` per batch, predictions copied to the host and
                 counted with numpy every batch;
  * rscert    -- :class:`rscert.sampling.sampler.Sampler` in each precision;
and the ratios rscert / bare (same precision) and rscert / paper-fp32. rscert draws its noise with the
counter-based Philox generator (pipeline/sampling/noise.py) in float32 and casts the noisy batch to the forward
dtype (f∘cast); ``bare`` gets a batch already in that dtype, so the gap is the cost of noise + cast.
A second table times the generator alone against torch.randn on the same batch shape, and the cast.
Each variant runs --repeats times, interleaved, and the medians are reported.

    python bench/sampler_bench.py --model resnet18 --size 224 --batch 32 --samples 64 \
        --precisions fp32,bf16,fp16 --repeats 2                                             # CPU
    python bench/sampler_bench.py --model resnet50 --size 224 --batch 400 --samples 20000  # GPU
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rscert.models.load import load_model  # noqa: E402
from rscert.sampling import noise  # noqa: E402
from rscert.sampling.noise import normal_, stream  # noqa: E402
from rscert.sampling.sampler import Sampler, SamplerOptions, default_device  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def bare_forward(model, x, batch, samples, device, precision, channels_last) -> float:
    """Samples/s of model(batch) alone: the batch is made once, outside the timed region."""
    data = x.to(device, DTYPES[precision]).repeat(batch, 1, 1, 1)
    if channels_last:
        data = data.contiguous(memory_format=torch.channels_last)
    steps = max(1, samples // batch)
    with torch.inference_mode(), _autocast(device, precision):
        model(data)
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            model(data).argmax(1)
        _sync(device)
    return steps * batch / (time.perf_counter() - start)


def paper_loop(model, x, batch, samples, sigma, device, num_classes) -> float:
    """The published code's ``_sample_noise``: repeat, randn_like, forward, .cpu() and count per batch."""
    counts = np.zeros(num_classes, dtype=int)
    xd = x.to(device)
    start = time.perf_counter()
    remaining = samples
    with torch.no_grad():
        while remaining > 0:
            this = min(batch, remaining)
            remaining -= this
            b = xd.repeat((this, 1, 1, 1))
            noise = torch.randn_like(b, device=device) * sigma
            pred = model(b + noise).argmax(1)
            counts += np.bincount(pred.cpu().numpy(), minlength=num_classes)
    _sync(device)
    return samples / (time.perf_counter() - start)


def rscert(model, x, batch, samples, sigma, device, precision, channels_last, compile_) -> float:
    opts = SamplerOptions(batch_size=batch, precision=precision, channels_last=channels_last, compile=compile_)
    sampler = Sampler(model, opts, device=device)
    sampler.counts(x, ["warm"], sigma, batch, 0, "estimation")  # warm-up (and compile)
    _sync(device)
    start = time.perf_counter()
    sampler.counts(x, ["timed"], sigma, samples, 0, "estimation")
    _sync(device)
    return samples / (time.perf_counter() - start)


def noise_costs(shape: tuple[int, ...], batch: int, device: torch.device, precisions: list[str]) -> dict[str, float]:
    """Seconds per batch of: the Philox generator (on CPU also with the torch-only Philox rounds),
    torch.randn, and the cast of a float32 batch."""
    out = torch.empty((batch, *shape), device=device)
    key = stream(0, "bench", "estimation")
    times: dict[str, float] = {}

    def clock(name: str, fn) -> None:  # noqa: ANN001
        fn()
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times[name] = time.perf_counter() - start

    clock("philox", lambda: normal_(out, key, 0))  # what the sampler runs (numba words on CPU)
    if device.type == "cpu":
        saved = noise._CPU_KERNEL_MIN
        noise._CPU_KERNEL_MIN = 1 << 62
        clock("philox torch-only", lambda: normal_(out, key, 0))  # the words from torch integer ops
        noise._CPU_KERNEL_MIN = saved
    clock("randn", lambda: torch.randn(out.shape, out=out))
    for precision in precisions:
        if precision != "fp32":
            clock(f"cast {precision}", lambda p=precision: out.to(DTYPES[p]))
    return times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--sigma", type=float, default=0.5)
    ap.add_argument("--precisions", default=None, help="comma list; default fp32 on CPU, fp32,bf16,fp16 on GPU")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--device", default=None)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are reported")
    ap.add_argument("--noise-only", action="store_true", help="only the generator table (no model)")
    args = ap.parse_args(argv)
    if args.noise_only:
        noise_table(args)
        return

    device = torch.device(args.device) if args.device else default_device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    precisions = (args.precisions or ("fp32,bf16,fp16" if device.type == "cuda" else "fp32")).split(",")
    model = load_model(args.model, num_classes=args.num_classes, random_init=True).model.eval().to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, args.size, args.size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; model {args.model} at {args.size}x{args.size}; "
          f"batch {args.batch}; {args.samples} samples; channels_last={args.channels_last}; compile={args.compile}")

    runs: dict[tuple[str, str], list[float]] = {}
    costs: dict[str, list[float]] = {}
    for _ in range(args.repeats):  # interleaved, so drift in machine speed hits every variant alike
        for name, secs in noise_costs((3, args.size, args.size), args.batch, device, precisions).items():
            costs.setdefault(name, []).append(secs)
        runs.setdefault(("paper", "fp32"), []).append(
            paper_loop(model, x, args.batch, args.samples, args.sigma, device, args.num_classes))
        for precision in precisions:
            runs.setdefault(("bare", precision), []).append(
                bare_forward(model, x, args.batch, args.samples, device, precision, args.channels_last))
            runs.setdefault(("rscert", precision), []).append(
                rscert(model, x, args.batch, args.samples, args.sigma, device, precision, args.channels_last,
                       args.compile))
    med = {k: float(np.median(v)) for k, v in runs.items()}
    paper = med[("paper", "fp32")]
    rows = [("paper loop", "fp32", paper, None, 1.0)]
    for precision in precisions:
        bare, ours = med[("bare", precision)], med[("rscert", precision)]
        rows.append(("bare forward", precision, bare, None, bare / paper))
        rows.append(("rscert", precision, ours, ours / bare, ours / paper))
    print(f"{'what':<14}{'precision':<11}{'samples/s':>12}{'x bare':>9}{'x paper':>10}")
    for what, precision, rate, vs_bare, vs_paper in rows:
        vb = f"{vs_bare:.3f}" if vs_bare is not None else "-"
        print(f"{what:<14}{precision:<11}{rate:>12.1f}{vb:>9}{vs_paper:>10.2f}")
    cost = {k: float(np.median(v)) for k, v in costs.items()}
    fwd = {p: args.batch / med[("bare", p)] for p in precisions}
    print(f"\nper batch of {args.batch} at 3x{args.size}x{args.size}: seconds, and ratios")
    print(f"{'what':<16}{'seconds':>10}{'x randn':>9}" + "".join(f"{'/fwd ' + p:>11}" for p in precisions))
    for name, secs in cost.items():
        ratios = "".join(f"{secs / fwd[p]:>11.3f}" for p in precisions)
        print(f"{name:<16}{secs:>10.4f}{secs / cost['randn']:>9.1f}{ratios}")


def noise_table(args: argparse.Namespace) -> None:
    """Normals per second of each generator on batches of 3 x size x size, medians of interleaved runs."""
    device = torch.device(args.device) if args.device else default_device()
    shape = (3, args.size, args.size)
    costs: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name, secs in noise_costs(shape, args.batch, device, []).items():
            costs.setdefault(name, []).append(secs)
    values = args.batch * 3 * args.size * args.size
    print(f"device: {device} x{torch.get_num_threads()} threads; torch {torch.__version__}; batch {args.batch} "
          f"x 3x{args.size}x{args.size}; {args.repeats} interleaved repeats")
    cost = {k: float(np.median(v)) for k, v in costs.items()}
    print(f"{'generator':<20}{'seconds':>10}{'M normals/s':>13}{'x randn':>9}")
    for name, secs in cost.items():
        print(f"{name:<20}{secs:>10.4f}{values / secs / 1e6:>13.1f}{secs / cost['randn']:>9.2f}")


if __name__ == "__main__":
    main()
