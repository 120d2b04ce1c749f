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

Optional rows (flags): ``bare graph`` -- the bare forward replayed from one captured CUDA graph
(--cuda-graphs, CUDA only); ``rscert cnoise`` -- the sampler with the generator's integer part compiled
(--compile-noise, :mod:`rscert.sampling.noise_compiled`, the same noise bit for bit); ``certify fixed`` and
``certify seq`` -- CERTIFY on one input with N0 = 100 and N = the samples, fixed and sequential (the
sequential rule here never stops before the cap: the cost of its looks at full N) (--certify).
--compile compiles the model of every row but the paper loop. --batch takes a comma list (one table
each); --steps sets the samples to that many batches; --json appends one JSON object per row.

    python bench/sampler_bench.py --model resnet18 --size 224 --batch 32 --samples 64 \
        --precisions fp32,bf16,fp16 --repeats 2                                             # CPU
    python bench/sampler_bench.py --model resnet50 --size 224 --batch 256,512,1024 --steps 4 \
        --channels-last --cuda-graphs --compile-noise --certify                            # GPU
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rscert.models.load import load_model  # noqa: E402
from rscert.sampling import noise  # noqa: E402
from rscert.sampling.certify import SmoothingParams, certify, certify_sequential  # noqa: E402
from rscert.sampling.noise import normal_, stream  # noqa: E402
from rscert.sampling.sampler import Sampler, SamplerOptions, default_device  # noqa: E402
from rscert.stats.sequential import Decision, lower_bound  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _autocast(device: torch.device, precision: str, cache: bool = True):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision], cache_enabled=cache)


def bare_forward(model, x, batch, samples, device, precision, channels_last, graph=False) -> float:
    """Samples/s of model(batch) alone: the batch is made once, outside the timed region. With
    ``graph`` (CUDA), the forward is captured once in a CUDA graph and replayed."""
    data = x.to(device, DTYPES[precision]).repeat(batch, 1, 1, 1)
    if channels_last:
        data = data.contiguous(memory_format=torch.channels_last)
    steps = max(1, samples // batch)
    if graph:
        return _bare_graph(model, data, steps, device, precision)
    with torch.inference_mode(), _autocast(device, precision):
        model(data)
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            model(data).argmax(1)
        _sync(device)
    return steps * batch / (time.perf_counter() - start)


def _bare_graph(model, data, steps, device, precision) -> float:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode(), _autocast(device, precision, cache=False):  # no cast cache in a graph
        with torch.cuda.stream(side):
            for _ in range(2):
                model(data).argmax(1)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            model(data).argmax(1)
    graph.replay()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        graph.replay()
    _sync(device)
    return steps * data.shape[0] / (time.perf_counter() - start)


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


def _sampler(model, batch, device, precision, channels_last, compile_, compile_noise=False) -> Sampler:
    opts = SamplerOptions(batch_size=batch, precision=precision, channels_last=channels_last, compile=compile_,
                          compile_noise=compile_noise)
    return Sampler(model, opts, device=device)


def rscert(model, x, batch, samples, sigma, device, precision, channels_last, compile_, compile_noise=False) -> float:
    sampler = _sampler(model, batch, device, precision, channels_last, compile_, compile_noise)
    sampler.counts(x, ["warm"], sigma, batch, 0, "estimation")  # warm-up (and compile)
    _sync(device)
    start = time.perf_counter()
    sampler.counts(x, ["timed"], sigma, samples, 0, "estimation")
    _sync(device)
    return samples / (time.perf_counter() - start)


def _to_the_cap(tally, top, look, schedule, radii, radius) -> Decision:  # noqa: ANN001
    """A stopping rule that stops nobody before the last look (valid: any rule is; here, the cost of
    sequential sampling's looks at full N)."""
    last = look == len(schedule.looks) - 1
    lower = lower_bound(tally.total[np.arange(top.size), top], look, schedule)
    return Decision(lower, 1 - lower, np.full(top.shape, last), np.full(top.shape, "cap"))


def certify_rate(model, x, batch, samples, sigma, device, precision, channels_last, compile_,
                 sequential) -> float:
    """Samples/s (N0 + N per input) of CERTIFY on one input, fixed or sequential sampling."""
    sampler = _sampler(model, batch, device, precision, channels_last, compile_)
    sampler.counts(x, ["warm"], sigma, batch, 0, "estimation")
    params = SmoothingParams(sigma=sigma, n0=100, n=samples, alpha=0.001)
    _sync(device)
    start = time.perf_counter()
    if sequential:
        certify_sequential(sampler, x, ["timed"], None, params, radii=[0.0], rule=_to_the_cap)
    else:
        certify(sampler, x, ["timed"], None, params)
    _sync(device)
    return (100 + samples) / (time.perf_counter() - start)


def noise_costs(shape: tuple[int, ...], batch: int, device: torch.device, precisions: list[str],
                compiled: bool = False) -> dict[str, float]:
    """Seconds per batch of: the Philox generator (on CPU also with the torch-only Philox rounds; with
    ``compiled`` also :mod:`rscert.sampling.noise_compiled`), torch.randn, and the cast of a float32 batch."""
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
    if compiled:
        from rscert.sampling import noise_compiled

        try:
            clock("philox compiled", lambda: noise_compiled.normal_(out, key, 0))
        except Exception as exc:  # noqa: BLE001 - reported, not fatal (e.g. no compiler for Triton)
            times["philox compiled"] = float("nan")
            print(f"philox compiled: FAILED: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
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
    ap.add_argument("--batch", default="32", help="batch size, or a comma list (one table each)")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--steps", type=int, default=None, help="samples = this many batches (overrides --samples)")
    ap.add_argument("--sigma", type=float, default=0.5)
    ap.add_argument("--precisions", default=None, help="comma list; default fp32 on CPU, fp32,bf16,fp16 on GPU")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (every row but the paper loop)")
    ap.add_argument("--cuda-graphs", action="store_true", help="add the bare forward replayed from a CUDA graph")
    ap.add_argument("--compile-noise", action="store_true", help="add the sampler with the compiled generator")
    ap.add_argument("--certify", action="store_true", help="add CERTIFY (N0 = 100) fixed and sequential")
    ap.add_argument("--no-paper", action="store_true", help="leave out the paper loop (ratios then vs bare fp32)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are reported")
    ap.add_argument("--json", default=None, help="append one JSON object per row to this file")
    ap.add_argument("--noise-only", action="store_true", help="only the generator table (no model)")
    args = ap.parse_args(argv)
    if args.noise_only:
        noise_table(args)
        return

    device = torch.device(args.device) if args.device else default_device()
    if args.cuda_graphs and device.type != "cuda":
        ap.error("--cuda-graphs needs a CUDA device")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    precisions = (args.precisions or ("fp32,bf16,fp16" if device.type == "cuda" else "fp32")).split(",")
    model = load_model(args.model, num_classes=args.num_classes, random_init=True).model.eval().to(device)
    paper_model = copy.deepcopy(model)  # the paper's loop runs the model as published: no memory format
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    bare_model = torch.compile(model) if args.compile else model
    x = torch.rand(1, 3, args.size, args.size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; model {args.model} at {args.size}x{args.size}; "
          f"channels_last={args.channels_last}; compile={args.compile}; {args.repeats} interleaved repeats")
    for batch in [int(b) for b in args.batch.split(",")]:
        samples = args.steps * batch if args.steps else args.samples
        table(args, device, precisions, model, bare_model, paper_model, x, batch, samples, name)


def table(args, device, precisions, model, bare_model, paper_model, x, batch, samples, name) -> None:  # noqa: ANN001
    """One table: every variant at this batch size, interleaved over the repeats; medians."""
    variants: list[tuple[str, str, object]] = []
    if not args.no_paper:
        variants.append(("paper loop", "fp32", lambda: paper_loop(paper_model, x, batch, samples, args.sigma, device,
                                                                   args.num_classes)))
    common = (x, batch, samples, args.sigma, device)
    for p in precisions:
        variants.append(("bare forward", p, lambda p=p: bare_forward(bare_model, x, batch, samples, device, p,
                                                                     args.channels_last)))
        if args.cuda_graphs:
            variants.append(("bare graph", p, lambda p=p: bare_forward(bare_model, x, batch, samples, device, p,
                                                                       args.channels_last, graph=True)))
        variants.append(("rscert", p, lambda p=p: rscert(model, *common, p, args.channels_last, args.compile)))
        if args.compile_noise:
            variants.append(("rscert cnoise", p, lambda p=p: rscert(model, *common, p, args.channels_last,
                                                                    args.compile, compile_noise=True)))
        if args.certify:
            for seq in (False, True):
                variants.append(("certify " + ("seq" if seq else "fixed"), p,
                                 lambda p=p, seq=seq: certify_rate(model, *common, p, args.channels_last,
                                                                   args.compile, seq)))
    runs: dict[tuple[str, str], list[float]] = {}
    costs: dict[str, list[float]] = {}
    failed: set[tuple[str, str]] = set()
    for _ in range(args.repeats):  # interleaved, so drift in machine speed hits every variant alike
        for what, secs in noise_costs((3, args.size, args.size), batch, device, precisions,
                                      args.compile_noise).items():
            costs.setdefault(what, []).append(secs)
        for what, p, run in variants:
            if (what, p) in failed:
                continue
            try:
                runs.setdefault((what, p), []).append(run())
            except Exception as exc:  # noqa: BLE001 - an optional variant that cannot run here is reported, not fatal
                if what in ("paper loop", "bare forward", "rscert"):
                    raise
                failed.add((what, p))
                runs[(what, p)] = [float("nan")]
                print(f"{what} {p}: FAILED: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
    med = {k: float(np.median(v)) for k, v in runs.items()}
    ref_key = ("bare forward", "fp32") if args.no_paper else ("paper loop", "fp32")
    ref = med.get(ref_key)
    print(f"\nbatch {batch}; {samples} samples per measurement")
    print(f"{'what':<15}{'precision':<11}{'samples/s':>12}{'x bare':>9}{'x ' + ref_key[0].split()[0]:>10}")
    rows = []
    for (what, p), rate in med.items():
        vs_bare = None if what == "paper loop" else rate / med[("bare forward", p)]
        vs_ref = rate / ref if ref else None
        rows.append({"what": what, "precision": p, "samples_per_s": rate, "x_bare": vs_bare, "x_ref": vs_ref})
        vb = f"{vs_bare:.3f}" if vs_bare is not None else "-"
        vr = f"{vs_ref:.2f}" if vs_ref is not None else "-"
        print(f"{what:<15}{p:<11}{rate:>12.1f}{vb:>9}{vr:>10}")
    cost = {k: float(np.median(v)) for k, v in costs.items()}
    fwd = {p: batch / med[("bare forward", p)] for p in precisions}
    print(f"\nper batch of {batch} at 3x{args.size}x{args.size}: seconds, and ratios")
    print(f"{'what':<16}{'seconds':>10}{'x randn':>9}" + "".join(f"{'/fwd ' + p:>11}" for p in precisions))
    for what, secs in cost.items():
        ratios = "".join(f"{secs / fwd[p]:>11.3f}" for p in precisions)
        print(f"{what:<16}{secs:>10.4f}{secs / cost['randn']:>9.1f}{ratios}")
        shares = {f"share_of_fwd_{p}": secs / fwd[p] for p in precisions}
        rows.append({"what": what, "seconds_per_batch": secs, **shares})
    if args.json:
        meta = {"device": name, "torch": torch.__version__, "model": args.model, "size": args.size, "batch": batch,
                "samples": samples, "channels_last": args.channels_last, "compile": args.compile}
        with open(args.json, "a") as fh:
            for row in rows:
                fh.write(json.dumps({**meta, **row}) + "\n")


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
