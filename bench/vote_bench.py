"""Cost of soft votes against hard votes: the same draws through Sampler.tally, timed in one run.

    python bench/vote_bench.py                       # CPU, small CNN on 32x32 inputs
    python bench/vote_bench.py --device cuda --model resnet50 --size 224 --n 20000 --batch 1000

Prints the seconds of each vote and their ratio (soft / hard), measured alternately (hard, soft, hard,
soft, ...) so that drift hits both, and, with ``--check``, how far the device's soft sums are from a
float64 CPU recomputation of the same draws on one input (they must agree to float32 rounding).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rscert.sampling.noise import normal, stream  # noqa: E402
from rscert.sampling.sampler import Sampler, SamplerOptions  # noqa: E402


def _model(name: str, classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "small":
        return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
                                   torch.nn.Flatten(), torch.nn.Linear(256, classes))
    import torchvision

    return getattr(torchvision.models, name)(num_classes=classes)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="small", help="small, or a torchvision model name (random weights)")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--inputs", type=int, default=4)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=400)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--check", action="store_true", help="compare the soft sums with a CPU float64 recomputation")
    args = ap.parse_args()
    device = torch.device(args.device)
    model = _model(args.model, args.classes)
    x = torch.rand(args.inputs, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    ids = [str(i) for i in range(args.inputs)]
    sampler = Sampler(model, SamplerOptions(batch_size=args.batch, precision=args.precision), device=device)
    sampler.tally(x, ids, 0.25, min(args.n, args.batch), 0, "estimation")  # warm up
    times: dict[str, list[float]] = {"hard": [], "soft": []}
    for _ in range(args.repeats):
        for vote in ("hard", "soft"):
            _sync(device)
            start = time.perf_counter()
            tally = sampler.tally(x, ids, 0.25, args.n, 0, "estimation", vote=vote)
            _sync(device)
            times[vote].append(time.perf_counter() - start)
    hard, soft = statistics.median(times["hard"]), statistics.median(times["soft"])
    print(f"{args.model} {args.size}px, {args.inputs} inputs x {args.n} draws, batch {args.batch}, {args.precision}, "
          f"{device}: hard {hard:.3f} s, soft {soft:.3f} s, soft/hard {soft / hard:.3f}")
    print(f"soft row sums / draws: {(tally.total.sum(1) / args.n).round(6).tolist()}")
    if args.check:
        n = min(args.n, 500)
        dev_tally = sampler.tally(x[:1], ids[:1], 0.25, n, 0, "estimation", vote="soft")
        noise = normal(stream(0, ids[0], "estimation"), 0, n, tuple(x.shape[1:]))
        with torch.no_grad():
            ref = torch.softmax(model.double().cpu()(x[0].double() + 0.25 * noise.double()), dim=1).sum(0).numpy()
        err = abs(dev_tally.total[0] - ref).max()
        print(f"check: largest |device soft sum - CPU float64 sum| over {args.classes} classes, {n} draws: {err:.2e}")


if __name__ == "__main__":
    main()
