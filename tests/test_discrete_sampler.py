"""The sampler's discrete-gaussian path: the votes of the exact noisy lattice points, however the draws are
batched, with ambiguous draws voted once exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from rscert.sampling import discrete_noise as dn
from rscert.sampling.noise import stream
from rscert.sampling.sampler import Sampler, SamplerOptions
from rscert.stats import discrete_gaussian as dg

CLASSES = 7
LATTICE = "discrete-gaussian"


class LevelSum(nn.Module):
    """Class = (sum of the lattice levels round(255 x)) mod 7, and it records every input it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        levels = torch.round(x.double() * 255).flatten(1).sum(dim=1).long()
        return nn.functional.one_hot(levels % CLASSES, CLASSES).float()


def _inputs(count: int, shape: tuple[int, ...] = (2, 5, 5)) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (count, *shape), generator=gen).float() / 255


def _reference(x: torch.Tensor, ids: list[str], sigma: float, n: int, seed: int, phase: str,
               start: int = 0, device: str = "cpu") -> np.ndarray:
    """Votes from the documented construction: exact atoms per input, levels k + m, f of fl32((k + m)/255)."""
    tab = dg.table(sigma, dg.PREFIX_BITS)
    votes = np.zeros((x.shape[0], CLASSES), dtype=np.int64)
    for i, ident in enumerate(ids):
        m = dn.atoms(stream(seed, ident, phase), start, n, tuple(x.shape[1:]), tab, device=device).cpu().numpy()
        k = np.rint(x[i].numpy().astype(np.float64) * 255).astype(np.int64)
        values = (k + m).astype(np.float32) / np.float32(255)  # IEEE division: the float32 nearest n/255
        cls = np.rint(values.astype(np.float64) * 255).reshape(n, -1).sum(axis=1).astype(np.int64) % CLASSES
        votes[i] = np.bincount(cls, minlength=CLASSES)
    return votes


@pytest.mark.parametrize("bits", [63, 16])
def test_votes_are_those_of_the_exact_lattice_points(bits: int, monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    """At 16 bits most draws hold an ambiguous prefix: they get weight 0 in their batch and vote once exact."""
    monkeypatch.setattr(dg, "PREFIX_BITS", bits)
    x, ids = _inputs(3), ["a", "b", "c"]
    model = LevelSum()
    sampler = Sampler(model, SamplerOptions(batch_size=37), device=device, num_classes=CLASSES, noise=LATTICE)
    votes = sampler.counts(x, ids, 0.3, 120, 5, "estimation")
    np.testing.assert_array_equal(votes, _reference(x, ids, 0.3, 120, 5, "estimation", device=device))
    assert (votes.sum(axis=1) == 120).all()
    # every value f received is the float32 of an integer lattice point n / 255
    seen = torch.cat(model.seen).cpu().double()
    levels = torch.round(seen * 255)
    assert torch.equal(seen.float(), (levels.float() / torch.tensor([255.0])))
    if bits == 16:  # the deferred path ran: more forward rows than batch rows
        assert sum(s.shape[0] for s in model.seen) > 3 * 120


def test_votes_do_not_depend_on_batching_companions_or_splits(device: str) -> None:
    x, ids = _inputs(4), ["w", "x", "y", "z"]
    one = Sampler(LevelSum(), SamplerOptions(batch_size=1000), device=device, num_classes=CLASSES, noise=LATTICE)
    other = Sampler(LevelSum(), SamplerOptions(batch_size=13), device=device, num_classes=CLASSES, noise=LATTICE)
    whole = one.counts(x, ids, 0.5, 300, 1, "selection")
    alone = np.concatenate([other.counts(x[i : i + 1], [ids[i]], 0.5, 300, 1, "selection") for i in (3, 2, 1, 0)][::-1])
    split = other.counts(x, ids, 0.5, 100, 1, "selection") + other.counts(x, ids, 0.5, 200, 1, "selection", start=100)
    np.testing.assert_array_equal(whole, alone)
    np.testing.assert_array_equal(whole, split)
    gauss = Sampler(LevelSum(), SamplerOptions(batch_size=1000), device=device, num_classes=CLASSES).counts(
        x, ids, 0.5, 300, 1, "selection")
    assert not np.array_equal(whole, gauss)  # the mode changes the noise


def test_clamp_keeps_noisy_inputs_on_the_lattice() -> None:
    model = LevelSum()
    options = SamplerOptions(batch_size=64, clamp=True)
    sampler = Sampler(model, options, device="cpu", num_classes=CLASSES, noise=LATTICE)
    sampler.counts(_inputs(2), ["p", "q"], 1.0, 64, 0, "estimation")
    seen = torch.cat(model.seen)
    assert seen.min() == 0.0 and seen.max() == 1.0
    levels = torch.round(seen.double() * 255)
    assert torch.equal(seen, levels.float() / torch.tensor([255.0]))


def test_bad_noise_and_off_grid_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="no draw for family"):
        Sampler(LevelSum(), SamplerOptions(batch_size=8), device="cpu", num_classes=CLASSES, noise="laplace-ish")
    sampler = Sampler(LevelSum(), SamplerOptions(batch_size=8), device="cpu", num_classes=CLASSES, noise=LATTICE)
    x = _inputs(1)
    x[0, 0, 0, 0] += 0.4 / 255
    with pytest.raises(ValueError, match=r"1 of 50 values are not 8-bit levels"):
        sampler.counts(x, ["a"], 0.5, 4, 0, "estimation")
    assert dn.off_grid(_inputs(1)) is None
    assert dn.off_grid(torch.full((3,), 1.0001)) is not None  # above 1: not a level
