"""`rscert demo` (what `make demo` runs): real data, real training, real certification on local Ray.

1. WebDataset shards of scikit-learn's bundled handwritten digits (1,797 real 8x8 images, a fixed
   stratified 75/25 train/test split), as 8-bit grayscale PNGs scaled to [0, 1] on decoding;
2. a small CNN trained with Gaussian noise augmentation at sigma 0.25 and 0.50, and one trained with
   Laplace noise at sigma 0.50 (the same standard deviation per coordinate);
3. CERTIFY on the test digits at both sigmas on a local Ray (N0 = 100, N = 10,000, alpha = 0.001), with
   fixed sampling and with sequential sampling (cap N, stopping once the table's cell is settled); and
   the Laplace model smoothed with Laplace noise, certified in its own norm, l1 (docs/families.md);
4. the analysis: both certified-accuracy tables side by side with the forward passes each mode spent,
   the Laplace l1 table beside the Gaussian l2 one, and the curves (PNG and SVG) of fixed sampling, one
   figure per norm;
5. denoised smoothing (docs/denoised.md) at sigma 0.50: the small CNN trained without noise (an
   off-the-shelf classifier) certified alone, and behind a DnCNN denoiser that ``rscert train
   --denoiser`` trains (MSE, then the stability objective through that frozen classifier), in one table
   and one figure beside the noise-trained model.

Every step reuses what an earlier run finished: shards are kept, training resumes from its last
epoch, certification skips committed units, so a rerun takes seconds plus Ray's start.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from rscert.errors import ConfigError
from rscert.store.atomic import atomic_path

SIGMAS = (0.25, 0.50)
TRAIN_SHARDS, TEST_SHARDS = 4, 2
DATASET = "digits"  # its table radii: rscert.analysis.result.TABLE_RADII
MODES = {"fixed": "certify", "sequential": "certify-sequential"}  # sampling -> folder under --out
FAMILY, FAMILY_SIGMA = "laplace", 0.50  # the non-Gaussian family shown beside the Gaussian one
FAMILY_FOLDER = f"certify-{FAMILY}"
DENOISE_SIGMA, DENOISE_FOLDER = 0.50, "certify-denoised"
DENOISER = {"denoiser": "dncnn", "denoiser_width": 16, "denoiser_depth": 5}  # small: 8x8 digits, 2 CPU cores


def require_scikit_learn() -> None:
    """The demo's digits come from scikit-learn (an extra: ``rscert[demo]``); say so before anything runs."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise ConfigError("demo", "needs scikit-learn, whose handwritten digits it certifies: "
                          "pip install 'rscert[demo]' (or pip install scikit-learn)") from None


def write_digits(folder: Path) -> tuple[str, str]:
    """Shard specs (train, test) of the digits; written once."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from webdataset import TarWriter

    train_spec = str(folder / f"digits-train-{{000000..{TRAIN_SHARDS - 1:06d}}}.tar")
    test_spec = str(folder / f"digits-test-{{000000..{TEST_SHARDS - 1:06d}}}.tar")
    done = folder / "_complete"
    if done.exists():
        return train_spec, test_spec
    folder.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    index = np.arange(len(digits.target))
    train_idx, test_idx = train_test_split(index, test_size=0.25, random_state=0, stratify=digits.target)
    for name, idx, count in (("train", train_idx, TRAIN_SHARDS), ("test", np.sort(test_idx), TEST_SHARDS)):
        for s, part in enumerate(np.array_split(idx, count)):
            path = folder / f"digits-{name}-{s:06d}.tar"
            with atomic_path(path) as tmp, TarWriter(str(tmp)) as sink:
                for i in part:
                    pixels = np.round(digits.images[i] / 16.0 * 255).astype(np.uint8)
                    buf = io.BytesIO()
                    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
                    sink.write({"__key__": f"digit{i:04d}", "png": buf.getvalue(),
                                "cls": str(int(digits.target[i])).encode()})
    done.write_text("ok\n")
    return train_spec, test_spec


def forward_passes(folder: Path) -> int:
    """Noisy samples drawn (n0 + n over the rows; n is what sequential sampling actually drew)."""
    import polars as pl

    rows = pl.read_parquet(f"{folder}/**/*.parquet").filter(pl.col("status") == "ok")
    return int((rows["n0"] + rows["n"]).sum())


def _certify_on_ray(config, log: Callable[[str], None]) -> int:
    """Prepare, run on the local Ray, report; the report's exit status."""
    from rscert.run.prepare import prepare
    from rscert.run.ray_runner import run_ray
    from rscert.run.report import report

    job = prepare(config, log=log)
    log(f"      {job.selected_inputs} inputs, {len(job.committed)} units already committed, {len(job.pending)} to run")
    try:
        run_ray(job, log=log)
        return report(job, log=lambda m: log(f"      {m}"))
    finally:
        job.close()


def train_denoised(train_spec: str, root: Path, epochs: int, log: Callable[[str], None]) -> tuple[Path, Path]:
    """The off-the-shelf classifier (trained without noise) and a DnCNN for it: MSE first, then the
    stability objective through the frozen classifier (Salman et al. 2020). Checkpoint paths."""
    from rscert.config.train import TrainConfig
    from rscert.train import train

    clean = root / "models" / "off_the_shelf"
    log(f"[2/4] training small_cnn without noise (an off-the-shelf classifier) -> {clean / 'checkpoint.pt'}")
    train(TrainConfig(data=train_spec, model="small_cnn", num_classes=10, out=str(clean), sigma=0.0, epochs=epochs,
                      batch_size=64, optimizer="sgd", lr=0.05, schedule="cosine", seed=0),
          log=lambda m: log(f"      {m}"))
    common = {"data": train_spec, "sigma": DENOISE_SIGMA, "batch_size": 32, "optimizer": "adam", "lr": 2e-3,
              "weight_decay": 0.0, "schedule": "constant", "seed": 0}
    mse = root / "models" / f"denoiser_mse_sigma_{DENOISE_SIGMA:.2f}"
    log(f"[2/4] rscert train --denoiser dncnn, MSE objective, sigma={DENOISE_SIGMA:.2f} -> {mse / 'checkpoint.pt'}")
    train(TrainConfig(out=str(mse), epochs=max(1, epochs // 3), **DENOISER, **common), log=lambda m: log(f"      {m}"))
    stab = root / "models" / f"denoiser_sigma_{DENOISE_SIGMA:.2f}"
    log(f"[2/4] rscert train --denoiser dncnn, stability objective through the off-the-shelf classifier -> "
        f"{stab / 'checkpoint.pt'}")
    train(TrainConfig(out=str(stab), epochs=max(1, epochs // 2), denoiser="dncnn", objective="stability",
                      denoiser_init=str(mse / "checkpoint.pt"), classifier_checkpoint=str(clean / "checkpoint.pt"),
                      **common), log=lambda m: log(f"      {m}"))
    return clean / "checkpoint.pt", stab / "checkpoint.pt"


def run_demo(out: str, log: Callable[[str], None] = print, n: int = 10_000, epochs: int = 30,
             skip: int = 1) -> int:
    from rscert.analysis.aggregate import analyze
    from rscert.analysis.exports import write_outputs
    from rscert.analysis.plots import write_plots
    from rscert.analysis.result import TABLE_RADII
    from rscert.analysis.tables import terminal_table
    from rscert.config.certify import CertifyConfig
    from rscert.config.train import TrainConfig
    from rscert.stats.sequential import max_certifiable_radius
    from rscert.train import train

    require_scikit_learn()
    root = Path(out).resolve()
    started = time.perf_counter()
    log(f"[1/4] digits shards in {root / 'data'}")
    train_spec, test_spec = write_digits(root / "data")

    checkpoints = {}
    for sigma in SIGMAS:
        folder = root / "models" / f"sigma_{sigma:.2f}"
        log(f"[2/4] training small_cnn with noise sigma={sigma:.2f} -> {folder / 'checkpoint.pt'}")
        train(TrainConfig(data=train_spec, model="small_cnn", num_classes=10, out=str(folder), sigma=sigma,
                          epochs=epochs, batch_size=64, optimizer="sgd", lr=0.05, schedule="cosine", seed=0),
              log=lambda m: log(f"      {m}"))
        checkpoints[sigma] = folder / "checkpoint.pt"
    folder = root / "models" / f"{FAMILY}_sigma_{FAMILY_SIGMA:.2f}"
    log(f"[2/4] training small_cnn with {FAMILY} noise sigma={FAMILY_SIGMA:.2f} -> {folder / 'checkpoint.pt'}")
    train(TrainConfig(data=train_spec, model="small_cnn", num_classes=10, out=str(folder), sigma=FAMILY_SIGMA,
                      noise=FAMILY, epochs=epochs, batch_size=64, optimizer="sgd", lr=0.05, schedule="cosine",
                      seed=0), log=lambda m: log(f"      {m}"))
    checkpoints[FAMILY] = folder / "checkpoint.pt"
    clean, denoiser = train_denoised(train_spec, root, epochs, log)

    status = 0
    what = "every test digit" if skip == 1 else f"every {skip}th test digit"
    for sampling, folder in MODES.items():
        for sigma in SIGMAS:
            target = root / folder / f"sigma_{sigma:.2f}"
            radii = [r for r in TABLE_RADII[DATASET] if r <= max_certifiable_radius(n, 0.001, sigma)]
            extra = f", radii {radii}" if sampling == "sequential" else ""
            log(f"[3/4] certifying {what} at sigma={sigma:.2f} on local Ray, {sampling} sampling (N0=100, "
                f"N={n:,}, alpha=0.001{extra}) -> {target}")
            config = CertifyConfig(data=test_spec, out=str(target), checkpoint=str(checkpoints[sigma]),
                                   sigma=sigma, n0=100, n=n, alpha=0.001, batch_size=2500, unit_size=25, skip=skip,
                                   dataset=DATASET, split="test", executor="ray", seed=0, sampling=sampling,
                                   radii=radii if sampling == "sequential" else None)
            status |= _certify_on_ray(config, log)
    target = root / FAMILY_FOLDER / f"sigma_{FAMILY_SIGMA:.2f}"
    log(f"[3/4] certifying {what} with {FAMILY} noise at sigma={FAMILY_SIGMA:.2f} (l1 radii) on local Ray, fixed "
        f"sampling (N0=100, N={n:,}, alpha=0.001) -> {target}")
    config = CertifyConfig(data=test_spec, out=str(target), checkpoint=str(checkpoints[FAMILY]), sigma=FAMILY_SIGMA,
                           noise=FAMILY, n0=100, n=n, alpha=0.001, batch_size=2500, unit_size=25, skip=skip,
                           dataset=DATASET, split="test", executor="ray", seed=0)
    status |= _certify_on_ray(config, log)

    for name, extra in (("off_the_shelf", {}), ("off_the_shelf_denoiser", {"denoiser": str(denoiser)})):
        target = root / DENOISE_FOLDER / name
        log(f"[3/4] certifying {what} at sigma={DENOISE_SIGMA:.2f}: the classifier trained without noise"
            + (", behind the denoiser" if extra else ", alone") + f" (N0=100, N={n:,}, alpha=0.001) -> {target}")
        status |= _certify_on_ray(CertifyConfig(
            data=test_spec, out=str(target), checkpoint=str(clean), sigma=DENOISE_SIGMA, n0=100, n=n, alpha=0.001,
            batch_size=2500, unit_size=25, skip=skip, dataset=DATASET, split="test", executor="ray", seed=0, **extra),
            log)

    log("[4/4] analysis")
    for sampling, folder in MODES.items():
        passes = forward_passes(root / folder)
        print(f"\n{sampling} sampling: {passes:,} forward passes"
              + (f" ({forward_passes(root / MODES['fixed']) / max(passes, 1):.1f}x fewer than fixed)"
                 if sampling == "sequential" else ""))
        print(terminal_table(analyze([str(root / folder)], radii=list(TABLE_RADII[DATASET]))))
    beside = [str(root / MODES["fixed"] / f"sigma_{FAMILY_SIGMA:.2f}"), str(root / FAMILY_FOLDER)]
    print(f"\n{FAMILY} noise (l1 radii) beside Gaussian noise (l2 radii) at sigma = {FAMILY_SIGMA:.2f}; a Gaussian "
          "l2 radius also certifies l1 at the same radius (docs/families.md):")
    print(terminal_table(analyze(beside, radii=list(TABLE_RADII[DATASET]))))
    result = analyze([str(root / MODES["fixed"]), str(root / FAMILY_FOLDER)], radii=list(TABLE_RADII[DATASET]))
    figures = write_plots(result, root / "figures")
    tables = write_outputs(result, markdown=str(root / "figures" / "certified_accuracy.md"),
                           csv=str(root / "figures" / "summary.csv"))
    noise_trained = root / MODES["fixed"] / f"sigma_{DENOISE_SIGMA:.2f}"
    denoised = analyze([str(noise_trained), str(root / DENOISE_FOLDER)], radii=list(TABLE_RADII[DATASET]))
    print(f"\ndenoised smoothing at sigma = {DENOISE_SIGMA:.2f}: the noise-trained small_cnn "
          f"({checkpoints[DENOISE_SIGMA]}), the off-the-shelf one trained without noise ({clean}) alone, and behind "
          f"the denoiser ({denoiser}):")
    print(terminal_table(denoised))
    figures += write_plots(denoised, root / "figures" / "denoised")
    log(f"done in {time.perf_counter() - started:.0f}s")
    log(f"  data:     {root / 'data'}")
    log(f"  models:   {root / 'models'}")
    log(f"  results:  {root / 'certify'}, {root / 'certify-sequential'}, {root / FAMILY_FOLDER} and "
        f"{root / DENOISE_FOLDER} (Parquet, one row per test digit)")
    for path in tables + figures:
        log(f"  output:   {path}")
    log(f"  notebook: notebooks/certified_accuracy.ipynb (reads {root} by default)")
    return status
