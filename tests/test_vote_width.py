"""Votes of one input are never counted for another (issue 18, section 4): the output width of every
forward pass is checked against the class count, and every vote matrix's row sums against the draws
asked for, in fixed and sequential CERTIFY and in PREDICT. Real models whose output width changes with
the input's size or with the batch, real shards, the real job."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from webdataset import TarWriter

from rscert.cli import main
from rscert.sampling.certify import SmoothingParams, certify, certify_sequential, predict
from rscert.sampling.sampler import Sampler, check_votes

from .jobutil import certify_args, table
from .zoo import column_vote, ragged_batch

PARAMS = SmoothingParams(sigma=0.25, n0=20, n=200, alpha=0.01, seed=1)


def _bright_column(width: int, column: int) -> np.ndarray:
    pixels = np.zeros((width, width, 3), dtype=np.uint8)
    pixels[:, column] = 255
    return pixels


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _shard(path: Path) -> str:
    """4x4 and 8x8 inputs of class 1 (their brightest column), two copies of each, interleaved: the
    model has 4 classes for the first and 8 for the second."""
    with TarWriter(str(path)) as sink:
        for i, (width, column) in enumerate([(4, 1), (8, 1), (8, 1), (4, 1)]):
            sink.write({"__key__": f"k{i}", "png": _png(_bright_column(width, column)), "cls": str(column).encode()})
    return str(path)


@pytest.mark.parametrize("sampling", ["fixed", "sequential"])
def test_inputs_whose_output_is_wider_fail_their_rows_and_never_vote_for_others(tmp_path, sampling):
    data = _shard(tmp_path / "sizes-000000.tar")
    out = tmp_path / "out"
    args = certify_args(data, out, model="tests.zoo:column_vote", sigma=0.25, n0=20, n=400, sampling=sampling,
                        **{"unit-size": 4})
    assert main(args) == 0
    rows = table(out)
    assert rows["status"].to_list() == ["ok", "shape_error", "shape_error", "ok"]
    for error in rows["error"].to_list()[1:3]:
        assert "8 classes" in error and "(3, 8, 8)" in error and "4" in error, error
    ok = rows.filter(rows["status"] == "ok")
    assert ok["prediction"].to_list() == [1, 1] and (ok["radius"] > 0.25).all()
    assert ok["count_top"].to_list()[0] == ok["count_top"].to_list()[1]  # the copies agree
    assert ok["radius"].to_list()[0] == ok["radius"].to_list()[1]


def _inputs(width: int, count: int) -> torch.Tensor:
    x = torch.from_numpy(_bright_column(width, 1)).permute(2, 0, 1).float() / 255
    return x.expand(count, -1, -1, -1).contiguous()


@pytest.mark.parametrize("call", [certify, certify_sequential, predict])
def test_a_forward_pass_wider_than_the_class_count_is_refused(call):
    sampler = Sampler(column_vote(), device="cpu", num_classes=4)
    with pytest.raises(ValueError, match=r"8 classes.*4"):
        call(sampler, _inputs(8, 3), ["0", "1", "2"], None, PARAMS)
    narrow = Sampler(column_vote(), device="cpu", num_classes=8)
    with pytest.raises(ValueError, match=r"4 classes.*8"):
        call(narrow, _inputs(4, 3), ["0", "1", "2"], None, PARAMS)


@pytest.mark.parametrize("call", [certify, certify_sequential, predict])
def test_a_model_whose_width_changes_with_the_batch_is_refused(call):
    """One input fixes the class count (4); batches of the same shape return 5 columns."""
    from .zoo import tiny_cnn

    sampler = Sampler(ragged_batch(), device="cpu")
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert sampler.ensure_num_classes(x) == 4
    with pytest.raises(ValueError, match=r"5 classes.*4"):
        call(sampler, x, ["0", "1", "2"], None, PARAMS)
    # the same model's single-input path is tiny_cnn: a clean sampler counts the same votes draw for draw
    assert Sampler(tiny_cnn(), device="cpu").counts(x, ["0", "1", "2"], 0.25, 50, 1, "selection").sum() == 150


@pytest.mark.parametrize("sampling", ["fixed", "sequential"])
def test_the_job_fails_the_unit_of_a_ragged_model_instead_of_certifying(tmp_path, sampling, capsys):
    data = _shard(tmp_path / "sizes-000000.tar")
    out = tmp_path / "out"
    args = certify_args(data, out, model="tests.zoo:ragged_batch", preset="cifar", sampling=sampling,
                        n0=20, n=400, **{"unit-size": 2})
    assert main(args) == 1
    text = capsys.readouterr().out
    assert "5 classes" in text and "FAILED (2)" in text
    assert not list(out.glob("units/*.parquet"))


def test_row_sums_are_checked():
    votes = np.array([[3, 1], [2, 2]], dtype=np.int64)
    check_votes(votes, [4, 4])
    with pytest.raises(ValueError, match="input 1.*5 votes.*4 draws"):
        check_votes(np.array([[3, 1], [2, 3]]), [4, 4])
