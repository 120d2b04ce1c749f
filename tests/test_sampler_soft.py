"""Sampler.tally with soft votes: the sums of softmax(f(x + sigma e) / T) and of their squares, against the
same computation done draw by draw from the noise stream; additivity across calls and batches."""

import numpy as np
import pytest
import torch

from rscert.sampling.noise import normal, stream
from rscert.sampling.sampler import Sampler, SamplerOptions

from .conftest import tiny_cnn


@pytest.fixture
def setup():
    model = tiny_cnn(num_classes=5, seed=1)
    x = torch.rand(3, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    return model, x, ["a", "b", "c"]


@pytest.mark.parametrize("temperature", [1.0, 0.25])
def test_soft_sums_equal_the_draw_by_draw_computation(setup, temperature):
    model, x, ids = setup
    sigma, n, seed = 0.3, 250, 4
    tally = Sampler(model, SamplerOptions(batch_size=97), device="cpu").tally(
        x, ids, sigma, n, seed, "estimation", vote="soft", temperature=temperature)
    assert tally.n.tolist() == [n] * 3 and tally.total.dtype == np.float64
    for i, ident in enumerate(ids):
        noise = normal(stream(seed, ident, "estimation"), 0, n, tuple(x.shape[1:]))
        with torch.no_grad():
            scores = torch.softmax(model(x[i] + sigma * noise) / temperature, dim=1).double().numpy()
        assert tally.total[i] == pytest.approx(scores.sum(0), rel=1e-9, abs=1e-9)
        assert tally.total_sq[i] == pytest.approx((scores ** 2).sum(0), rel=1e-9, abs=1e-9)
    assert np.allclose(tally.total.sum(1), n)  # the scores of a draw sum to 1


def test_soft_sums_add_up_across_calls_and_batch_sizes(setup):
    model, x, ids = setup
    one = Sampler(model, SamplerOptions(batch_size=1000), device="cpu").tally(
        x, ids, 0.5, 300, 0, "selection", vote="soft")
    sampler = Sampler(model, SamplerOptions(batch_size=64), device="cpu")
    first = sampler.tally(x, ids, 0.5, 100, 0, "selection", vote="soft")
    rest = sampler.tally(x, ids, 0.5, 200, 0, "selection", start=100, vote="soft")
    both = first + rest
    assert both.n.tolist() == [300] * 3
    assert np.allclose(both.total, one.total, rtol=1e-12) and np.allclose(both.total_sq, one.total_sq, rtol=1e-12)
    # hard votes of the same draws: the tally is the counts
    hard = sampler.tally(x, ids, 0.5, 300, 0, "selection")
    assert hard.total_sq is None and np.array_equal(hard.total, sampler.counts(x, ids, 0.5, 300, 0, "selection"))


def test_bad_vote_and_temperature_are_refused(setup):
    model, x, ids = setup
    sampler = Sampler(model, SamplerOptions(batch_size=64), device="cpu")
    with pytest.raises(ValueError, match="vote"):
        sampler.tally(x, ids, 0.5, 10, 0, "selection", vote="mean")
    with pytest.raises(ValueError, match="temperature"):
        sampler.tally(x, ids, 0.5, 10, 0, "selection", vote="soft", temperature=-1.0)
