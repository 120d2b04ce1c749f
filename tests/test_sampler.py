"""The sampler: reproducible, packed, device-side counts with bounded memory.

Tests taking the ``device`` fixture run on every device of conftest.DEVICES (cpu, and cuda where there is
one). On a GPU, equal counts across batch sizes need the base classifier's outputs to be equal across
batch sizes too: the noise is equal bit for bit by construction, but a library may pick another
convolution or matmul algorithm for another batch shape, and a vote can flip where two logits tie to
the last bit (README, "Reproducibility on a GPU")."""

import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from rscert.sampling.noise import PHASES, normal, stream
from rscert.sampling.sampler import Sampler, SamplerOptions

from .conftest import ROOT

SIGMA = 0.5


def _inputs(count=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, 8, 8, generator=gen)


def _counts(model, x, keys, n, batch_size, phase="estimation", seed=0, device="cpu", **opts):
    sampler = Sampler(model, SamplerOptions(batch_size=batch_size, **opts), device=device)
    return sampler.counts(x, keys, SIGMA, n, seed, phase)


def _same(got, want):
    """Equal vote counts; on failure, how many votes moved (a GPU near-tie flips a few, a noise bug many)."""
    assert got.shape == want.shape
    moved = int(np.abs(got - want).sum()) // 2
    assert moved == 0, f"{moved} of {int(want.sum())} votes differ; max per class {int(np.abs(got - want).max())}"


def test_counts_sum_to_n_and_have_class_columns(cnn, device):
    x = _inputs()
    counts = _counts(cnn, x, list("abcdef"), 537, 128, device=device)
    assert counts.shape == (6, 5) and counts.dtype == np.int64
    assert (counts.sum(axis=1) == 537).all()


@pytest.mark.parametrize("batch_size", [1, 7, 100, 333, 5000])
def test_counts_do_not_depend_on_batch_size(cnn, batch_size, device):
    x, keys = _inputs(), list("abcdef")
    reference = _counts(cnn, x, keys, 237, 256, device=device)
    _same(_counts(cnn, x, keys, 237, batch_size, device=device), reference)


def test_counts_do_not_depend_on_order_or_companions(cnn, device):
    x, keys = _inputs(), list("abcdef")
    reference = _counts(cnn, x, keys, 450, 128, device=device)
    perm = [4, 2, 0, 5, 1, 3]
    shuffled = _counts(cnn, x[perm], [keys[i] for i in perm], 450, 128, device=device)
    _same(shuffled, reference[perm])
    alone = _counts(cnn, x[3:4], ["d"], 450, 128, device=device)
    _same(alone, reference[3:4])
    others = _inputs(4, seed=9)
    mixed = _counts(cnn, torch.cat([others[:2], x[3:4], others[2:]]), ["p", "q", "d", "r", "s"], 450, 128,
                    device=device)
    _same(mixed[2], reference[3])


def test_counts_add_up_over_any_split_of_the_draws(cnn, device):
    """counts(n=300) == counts(n=100) + counts(start=100, n=200), per input and with per-input ranges."""
    x, ids = _inputs(), list("abcdef")
    whole = _counts(cnn, x, ids, 300, 128, device=device)
    sampler = Sampler(cnn, SamplerOptions(batch_size=77), device=device)
    first = sampler.counts(x, ids, SIGMA, 100, 0, "estimation")
    rest = sampler.counts(x, ids, SIGMA, 200, 0, "estimation", start=100)
    _same(first + rest, whole)
    # uneven per-input splits, three calls, inputs in another order each time
    cuts = [(0, 13, 300), (0, 150, 300), (0, 299, 300), (0, 0, 300), (0, 1, 300), (0, 200, 300)]
    total = np.zeros_like(whole)
    for part, perm in ((0, [0, 1, 2, 3, 4, 5]), (1, [5, 3, 1, 0, 2, 4])):
        starts = [cuts[i][part] for i in perm]
        sizes = [cuts[i][part + 1] - cuts[i][part] for i in perm]
        got = sampler.counts(x[perm], [ids[i] for i in perm], SIGMA, sizes, 0, "estimation", start=starts)
        total[perm] += got
        assert np.array_equal(got.sum(axis=1), sizes)
    _same(total, whole)


def test_noise_depends_on_seed_id_and_phase(cnn, device):
    x = _inputs(1).repeat(2, 1, 1, 1)
    # same image under two ids: different noise, so (almost surely) different counts
    counts = _counts(cnn, x, ["k1", "k2"], 2000, 500, device=device)
    assert not np.array_equal(counts[0], counts[1])
    assert len({stream(0, "k", phase) for phase in PHASES}) == 3
    assert stream(0, "k", "selection") != stream(1, "k", "selection")
    assert stream(0, "k", "selection") != stream(0, "k2", "selection")


class _Probe(nn.Module):
    """Votes for class 1 iff pixel 0 exceeds a threshold: counts expose the noise itself."""

    def __init__(self, threshold: float = 0.0):
        super().__init__()
        self.threshold = threshold

    def forward(self, x):
        v = x.flatten(1)[:, 0] - self.threshold
        return torch.stack([-v, v], dim=1)


def test_selection_and_estimation_noise_are_independent(device):
    """Votes recorded per sample: correlation between phases should be ~0."""
    probe = _Probe()
    sampler = Sampler(probe, SamplerOptions(batch_size=100), device=device)
    x = torch.zeros(1, 1, 4, 4)
    draws = 4000
    per_sample = {}
    for phase in ("selection", "estimation"):
        noise = normal(stream(0, "img", phase), 0, draws, (1, 4, 4), device=device)
        per_sample[phase] = (noise.flatten(1)[:, 0] > 0).float().cpu().numpy()
        # the sampler's counts agree with the noise drawn from the same stream
        counts = sampler.counts(x, ["img"], 1.0, draws, 0, phase)
        assert counts[0, 1] == int(per_sample[phase].sum())
    corr = np.corrcoef(per_sample["selection"], per_sample["estimation"])[0, 1]
    assert abs(corr) < 4 / np.sqrt(draws)


def test_noise_scale_matches_sigma(device):
    probe = _Probe()
    sampler = Sampler(probe, SamplerOptions(batch_size=1000), device=device)
    # x0 = 0.5 * sigma at pixel 0: P[vote 1] = P[0.5 sigma + sigma z > 0] = Phi(0.5) = 0.6915
    x = torch.full((1, 1, 2, 2), 0.25)
    counts = sampler.counts(x, ["s"], 0.5, 20_000, 3, "estimation")
    assert counts[0, 1] / 20_000 == pytest.approx(0.6915, abs=0.015)


def test_clamp_keeps_inputs_in_the_unit_box(device):
    probe = _Probe(threshold=1.0)  # votes 1 iff pixel 0 > 1
    x = torch.ones(1, 1, 2, 2)
    clamp = Sampler(probe, SamplerOptions(batch_size=100, clamp=True), device=device)
    assert clamp.counts(x, ["z"], 1.0, 1000, 0, "estimation")[0, 1] == 0
    free = Sampler(probe, SamplerOptions(batch_size=100), device=device)
    assert 400 < free.counts(x, ["z"], 1.0, 1000, 0, "estimation")[0, 1] < 600


def test_one_host_transfer_per_call(cnn, monkeypatch, device):
    sampler = Sampler(cnn, SamplerOptions(batch_size=64), device=device)
    x = _inputs()
    sampler.counts(x, list("abcdef"), SIGMA, 10, 0, "selection")  # class count inferred here
    calls = {"cpu": 0, "item": 0, "tolist": 0}
    for name in calls:
        original = getattr(torch.Tensor, name)

        def spy(self, *a, _name=name, _orig=original, **k):
            calls[_name] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    if torch.device(device).type != "cuda":
        sampler.counts(x, list("abcdef"), SIGMA, 1000, 0, "estimation")  # 94 batches
    else:  # and CUDA's own count of the operations that wait for the device: the one copy back
        x = x.to(device)  # inputs already on the device: no copy in
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                sampler.counts(x, list("abcdef"), SIGMA, 1000, 0, "estimation")
            finally:
                torch.cuda.set_sync_debug_mode("default")
        # CUDA's warning per synchronizing call ("called a synchronizing CUDA operation"); its one-off notice
        # that the debug mode is a prototype ("Synchronization debug mode is ...") is not a synchronisation
        syncs = [str(w.message) for w in caught if "called a synchronizing" in str(w.message)]
        assert len(syncs) == 1, syncs
    assert calls == {"cpu": 1, "item": 0, "tolist": 0}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_runs_and_agrees_roughly(cnn, precision, device):
    x, keys = _inputs(), list("abcdef")
    fp32 = _counts(cnn, x, keys, 1000, 250, device=device)
    low = _counts(cnn, x, keys, 1000, 250, precision=precision, device=device)
    assert (low.sum(axis=1) == 1000).all()
    assert np.array_equal(low.argmax(axis=1), fp32.argmax(axis=1))
    # reproducible in its own precision, across batch sizes
    _same(_counts(cnn, x, keys, 1000, 99, precision=precision, device=device), low)


def test_channels_last_gives_the_same_counts(cnn, device):
    x, keys = _inputs(), list("abcdef")
    plain = _counts(cnn, x, keys, 300, 128, device=device)
    _same(_counts(cnn, x, keys, 300, 128, channels_last=True, device=device), plain)


def test_bad_arguments_are_refused(cnn):
    with pytest.raises(ValueError, match="batch_size"):
        SamplerOptions(batch_size=0)
    with pytest.raises(ValueError, match="precision"):
        SamplerOptions(precision="fp8")
    sampler = Sampler(cnn, device="cpu")
    with pytest.raises(ValueError, match="ids"):
        sampler.counts(_inputs(2), ["a", "a"], SIGMA, 10, 0, "selection")
    with pytest.raises(ValueError, match="ids"):
        sampler.counts(_inputs(2), ["a"], SIGMA, 10, 0, "selection")
    with pytest.raises(ValueError, match="start"):
        sampler.counts(_inputs(2), ["a", "b"], SIGMA, 10, 0, "selection", start=[0])
    with pytest.raises(ValueError, match="start"):
        sampler.counts(_inputs(1), ["a"], SIGMA, 10, 0, "selection", start=-1)
    with pytest.raises(ValueError, match="num_samples"):
        sampler.counts(_inputs(2), ["a", "b"], SIGMA, [10, -1], 0, "selection")
    with pytest.raises(ValueError, match="start"):
        sampler.counts(_inputs(1), ["a"], SIGMA, 10, 0, "selection", start=2**32 - 5)
    with pytest.raises(ValueError, match="phase"):
        sampler.counts(_inputs(1), ["a"], SIGMA, 10, 0, "warmup")


def test_memory_is_bounded_by_the_batch_not_by_n():
    """Peak RSS of 224x224 sampling grows by far less than n samples would take."""
    script = textwrap.dedent(
        f"""
        import json, resource, sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        from torch import nn
        from rscert.sampling.sampler import Sampler, SamplerOptions
        torch.set_num_threads(2)
        model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10))
        s = Sampler(model, SamplerOptions(batch_size=64), device="cpu")
        x = torch.rand(1, 3, 224, 224)
        s.counts(x, ["w"], 0.5, 64, 0, "estimation")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        c = s.counts(x, ["k"], 0.5, int(sys.argv[1]), 0, "estimation")
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"grow_kb": after - before, "total": int(c.sum())}}))
        """
    )
    n = 800  # all samples at once would be 800 * 602 kB = 480 MB
    out = subprocess.run([sys.executable, "-c", script, str(n)], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["total"] == n
    batch_kb = 64 * 3 * 224 * 224 * 4 / 1024
    assert result["grow_kb"] < 4 * batch_kb, result


def test_torch_compile_gives_the_same_counts(cnn, device):
    x, keys = _inputs(3), ["a", "b", "c"]
    eager = _counts(cnn, x, keys, 400, 200, device=device)
    compiled = _counts(cnn, x, keys, 400, 200, compile=True, device=device)
    assert (compiled.sum(axis=1) == 400).all()
    assert np.abs(compiled - eager).max() <= 2  # same noise; float reassociation may flip a rare near-tie
