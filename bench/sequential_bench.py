"""Sequential vs fixed sampling: forward passes, wall time and certified accuracy on the same inputs.

    python bench/sequential_bench.py --simulate                 # choose the bound (statistics only)
    python bench/sequential_bench.py --case linear --inputs 400  # linear classifier, known margins
    python bench/sequential_bench.py --case digits --inputs 40   # the demo's small CNN on the digits

Fixed: N = --n estimation samples per input (rscert's certify). Sequential: cap --n, stopping by the
table's cells (certify_sequential), once with a 4-radius table and once with a single radius. Forward
passes are counted by a hook on the model (rows of every batch, selection included). Ratios are
measured within one run; figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rscert.sampling.certify import SmoothingParams, certify, certify_sequential  # noqa: E402
from rscert.sampling.sampler import Sampler, SamplerOptions  # noqa: E402
from rscert.stats import sequential as seq  # noqa: E402
from rscert.stats.pair import Tally  # noqa: E402
from rscert.stats.smoothing import clopper_pearson_lower  # noqa: E402

# --------------------------------------------------------------------------------------------------
# simulation: binomial votes, no model (the decision between the two anytime-valid bounds)
# --------------------------------------------------------------------------------------------------


def _simulate(pa: np.ndarray, sigma: float, radii: list[float], alpha: float, n_max: int, method: str,
              rng: np.random.Generator) -> tuple[float, np.ndarray, np.ndarray]:
    """(forward-pass ratio fixed/sequential, certified fractions sequential, fixed) for true pA values."""
    sch = seq.look_schedule(n_max, alpha)
    m = len(pa)
    count, used, pl, active, prev = np.zeros(m, np.int64), np.zeros(m, np.int64), np.zeros(m), np.ones(m, bool), 0
    for j, nj in enumerate(sch.looks):
        idx = np.flatnonzero(active)
        count[idx] += rng.binomial(nj - prev, pa[idx])
        prev = nj
        if method == "union-cp":
            votes = Tally(np.full(len(idx), nj), np.stack([count[idx], nj - count[idx]], axis=1))
            d = seq.decide(votes, np.zeros(len(idx), np.int64), j, sch, radii, sigma)
            pl[idx], stop = d.p_lower, d.stop
        else:  # beta-mixture confidence sequence at the same looks, same stopping rule
            low = seq.mixture_lower(count[idx], nj, alpha)
            cells = seq.certified_cells(low, radii, sigma)
            k = count[idx].astype(float)
            upper = np.where(k >= nj, 1.0, seq.beta_dist.isf(seq.STOP_LEVEL, k + 1, nj - k))
            best = np.zeros(len(idx))
            for later in sch.looks[j + 1:]:
                best = np.maximum(best, seq.mixture_lower(np.round(upper * later), later, alpha))
            stop = (cells >= len(radii)) | (seq.certified_cells(best, radii, sigma) <= cells) | (nj == n_max)
            pl[idx] = low
        used[idx[stop]] = nj
        active[idx[stop]] = False
        if not active.any():
            break
    fixed = seq.certified_cells(clopper_pearson_lower(rng.binomial(n_max, pa), n_max, alpha), radii, sigma)
    cells = seq.certified_cells(pl, radii, sigma)
    frac = np.array([(cells > i).mean() for i in range(len(radii))])
    frac_fixed = np.array([(fixed > i).mean() for i in range(len(radii))])
    return m * (n_max + 100) / (used + 100).sum(), frac, frac_fixed


def simulate(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    sigma, m = 0.5, 2000
    spread = norm.cdf(rng.uniform(-0.5, 2.0, m) / sigma)
    populations = {"spread of margins": spread,
                   "half at pA = 1": np.concatenate([np.ones(m // 2), spread[: m // 2]])}
    tables = {"4 radii": [0.0, 0.5, 1.0, 1.5], "1 radius": [0.5],
              "default": seq.default_stop_radii(sigma, args.n, args.alpha)}
    print(f"sigma {sigma}, cap {args.n:,}, alpha {args.alpha}, {m} inputs per population; "
          f"schedule {seq.look_schedule(args.n, args.alpha).looks}")
    print("| population | table | bound | × fewer forward passes | certified accuracy, sequential − fixed (points) |")
    print("|---|---|---|---|---|")
    for pname, pa in populations.items():
        for tname, radii in tables.items():
            for method in ("union-cp", "beta-mixture"):
                ratio, a, f = _simulate(pa, sigma, radii, args.alpha, args.n, method, np.random.default_rng(1))
                deltas = " ".join(f"{100 * d:+.2f}" for d in a - f)
                print(f"| {pname} | {tname} | {method} | {ratio:.1f} | {deltas} |", flush=True)


# --------------------------------------------------------------------------------------------------
# real models through the real sampler
# --------------------------------------------------------------------------------------------------


class Counter:
    """Counts forward-pass rows (one per noisy sample) with a hook on the model."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.rows = 0
        model.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:  # noqa: ANN001
        self.rows += int(inputs[0].shape[0])


def linear_case(count: int, dim: int = 4, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, list[int], float]:
    """A linear classifier and inputs with margins spread over [-0.5 sigma, 2 sigma] (a fifth far away)."""
    from torch import nn

    sigma = 0.5
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, generator=gen)
    unit = w / w.norm()
    base = torch.randn(count, dim, generator=gen)
    base = base - (base @ unit).unsqueeze(1) * unit
    margins = torch.empty(count).uniform_(-0.5 * sigma, 2.0 * sigma, generator=gen)
    margins[::5] = 5.0 * sigma  # pA ~ 1: the inputs that certify at every radius
    x = base + margins.unsqueeze(1) * unit
    layer = nn.Linear(dim, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.stack([w, -w]) / 2)
        layer.bias.zero_()
    return layer, x, [0] * count, sigma


def digits_case(count: int, epochs: int) -> tuple[torch.nn.Module, torch.Tensor, list[int], float]:
    """The demo's small CNN trained with noise sigma = 0.25 on the digits; the first ``count`` test digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from rscert.config.train import TrainConfig
    from rscert.demo import write_digits
    from rscert.models.load import load_model
    from rscert.train import train

    sigma = 0.25
    root = Path(tempfile.gettempdir()) / "rscert-sequential-bench"
    train_spec, _ = write_digits(root / "data")
    folder = root / "model"
    train(TrainConfig(data=train_spec, model="small_cnn", num_classes=10, out=str(folder), sigma=sigma,
                      epochs=epochs, batch_size=64, optimizer="sgd", lr=0.05, schedule="cosine", seed=0),
          log=lambda m: None)
    loaded = load_model(None, str(folder / "checkpoint.pt"), None, "auto", False)
    digits = load_digits()
    _, test_idx = train_test_split(np.arange(len(digits.target)), test_size=0.25, random_state=0,
                                   stratify=digits.target)
    idx = np.sort(test_idx)[:count]
    pixels = np.round(digits.images[idx] / 16.0 * 255).astype(np.uint8) / 255.0  # as the PNG shards decode
    x = torch.tensor(pixels, dtype=torch.float32).unsqueeze(1)
    return loaded.model, x, [int(t) for t in digits.target[idx]], sigma


def certified(rows: list[dict], radii: list[float]) -> list[float]:
    return [100 * float(np.mean([bool(r["correct"]) and r["radius"] >= rad for r in rows])) for rad in radii]


def compare(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    if args.case == "linear":
        model, x, labels, sigma = linear_case(args.inputs)
        tables = {"4 radii": [0.0, 0.5, 1.0, 1.5], "1 radius": [0.5]}
    else:
        model, x, labels, sigma = digits_case(args.inputs, args.epochs)
        tables = {"4 radii": [0.0, 0.25, 0.5, 0.75], "1 radius": [0.5]}
    counter = Counter(model)
    sampler = Sampler(model, SamplerOptions(batch_size=args.batch), device="cpu")
    ids = [str(i) for i in range(len(x))]
    params = SmoothingParams(sigma=sigma, n0=100, n=args.n, alpha=args.alpha, seed=0)
    runs = {}
    for name, fn in [("fixed", lambda: certify(sampler, x, ids, labels, params))] + [
            (f"sequential, {t}", lambda r=r: certify_sequential(sampler, x, ids, labels, params, radii=r))
            for t, r in tables.items()]:
        counter.rows = 0
        start = time.perf_counter()
        rows = fn()
        runs[name] = (rows, counter.rows, time.perf_counter() - start)
        print(f"  {name}: {counter.rows:,} forward passes, {runs[name][2]:.1f} s", file=sys.stderr, flush=True)
    fixed_rows, fixed_passes, fixed_s = runs["fixed"]
    print(f"case {args.case}: {len(x)} inputs, sigma {sigma}, N0 100, N (cap) {args.n:,}, alpha {args.alpha}, "
          f"batch {args.batch}, {args.threads} threads")
    print("| run | forward passes | × fewer | wall s | × faster | certified accuracy % at r (fixed → sequential) |")
    print("|---|---|---|---|---|---|")
    print(f"| fixed | {fixed_passes:,} | 1.0 | {fixed_s:.1f} | 1.0 | |")
    for t, radii in tables.items():
        rows, passes, secs = runs[f"sequential, {t}"]
        acc = ", ".join(f"{r:g}: {a:.1f} → {b:.1f}" for r, a, b in
                        zip(radii, certified(fixed_rows, radii), certified(rows, radii), strict=True))
        reasons = {k: sum(r["stop_reason"] == k for r in rows) for k in seq.STOP_REASONS}
        print(f"| sequential, {t} {radii} | {passes:,} | {fixed_passes / passes:.1f} | {secs:.1f} | "
              f"{fixed_s / secs:.1f} | {acc} (stops: {reasons}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    parser.add_argument("--simulate", action="store_true", help="statistics-only comparison of the two bounds")
    parser.add_argument("--case", choices=["linear", "digits"], default="linear")
    parser.add_argument("--inputs", type=int, default=400)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=30, help="digits: training epochs")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    simulate(args) if args.simulate else compare(args)


if __name__ == "__main__":
    main()
