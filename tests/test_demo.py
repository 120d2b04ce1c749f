"""`rscert demo` end to end with small settings (the full demo is `make demo`): real digits, real
training, certification on a local Ray, analysis; a rerun reuses everything."""

import time

import polars as pl

from .jobutil import run


def test_demo_end_to_end_and_rerun(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--n", "300", "--epochs", "3", "--skip", "15"]
    first = run(args, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "every 15th test digit" in first.stderr
    for name in ("certified_accuracy_digits_test.png", "certified_accuracy_digits_test.svg", "comparison.png",
                 "certified_accuracy.md", "summary.csv"):
        assert (out / "figures" / name).exists(), name
    rows = pl.read_parquet(f"{out}/certify/**/*.parquet")
    assert rows.height == 2 * 30 and set(rows["sigma"].to_list()) == {0.25, 0.5}
    assert "digits, small_cnn, sigma = 0.25" in first.stdout
    seq = pl.read_parquet(f"{out}/certify-sequential/**/*.parquet")  # both modes, side by side
    assert seq.height == 2 * 30 and (seq["sampling"] == "sequential").all() and (seq["n"] <= 300).all()
    assert "fixed sampling:" in first.stdout and "sequential sampling:" in first.stdout
    lap = pl.read_parquet(f"{out}/certify-laplace/**/*.parquet")  # one non-Gaussian family beside the Gaussian
    assert lap.height == 30 and set(lap["noise"]) == {"laplace"} and set(lap["norm"]) == {"l1"}
    assert "laplace noise, sigma = 0.50, l1 radii" in first.stdout
    assert (out / "figures" / "certified_accuracy_digits_test_l1.png").exists()
    denoised = pl.read_parquet(f"{out}/certify-denoised/**/*.parquet")  # off-the-shelf, alone and denoised
    assert denoised.height == 2 * 30 and denoised["denoiser"].null_count() == 30
    trained = out.resolve() / "models" / "denoiser_sigma_0.50" / "checkpoint.pt"
    assert set(denoised["denoiser"].drop_nulls()) == {str(trained)}
    assert "denoised smoothing at sigma = 0.50" in first.stdout
    assert "small_cnn behind denoiser denoiser_sigma_0.50/checkpoint.pt, sigma = 0.50" in first.stdout
    assert (out / "figures" / "denoised" / "certified_accuracy_digits_test.png").exists()
    start = time.perf_counter()
    again = run(args, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("0 to run") == 7 and "ray:" not in again.stderr  # Ray is not even started
    assert time.perf_counter() - start < 60
    assert pl.read_parquet(f"{out}/certify/**/*.parquet").sort("key", "sigma").equals(rows.sort("key", "sigma"))
