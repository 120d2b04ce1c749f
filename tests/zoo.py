"""Small real models that tests (and subprocesses they start) load by ``tests.zoo:NAME``."""

import torch
from torch import nn


def tiny_cnn(num_classes: int = 4) -> nn.Module:
    """A fixed random small CNN for 3-channel images of any size (deterministic weights)."""
    gen = torch.Generator().manual_seed(1234)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                        nn.Linear(24, num_classes))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return net


def wide_cnn() -> nn.Module:
    """Six outputs whatever --num-classes says (the factory takes no num_classes)."""
    return tiny_cnn(num_classes=6)


class _Fragile(nn.Module):
    """tiny_cnn, except that a batch of more than one input with a top-left red pixel above 0.99
    raises: an unexpected failure in the middle of a unit (a one-input probe passes)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_cnn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if x.shape[0] > 1 and bool((x[:, 0, 0, 0] > 0.99).any()):
            raise RuntimeError("fragile model: cannot take this batch")
        return self.net(x)


def fragile_cnn(num_classes: int = 4) -> nn.Module:
    return _Fragile()


class _SwitchedFragile(_Fragile):
    """fragile_cnn while the environment variable RSCERT_ZOO_FRAGILE is 1, else tiny_cnn: the same
    weights (so the same run), a unit that fails in one submission and commits in the next."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        import os

        return super().forward(x) if os.environ.get("RSCERT_ZOO_FRAGILE") == "1" else self.net(x)


def switched_fragile_cnn(num_classes: int = 4) -> nn.Module:
    return _SwitchedFragile()


def unseeded_cnn(num_classes: int = 4) -> nn.Module:
    """Different weights on every call, whatever torch's seed: a factory a run must not trust."""
    import os

    net = tiny_cnn(num_classes)
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(7), "little"))
    with torch.no_grad():
        net[-1].bias.copy_(torch.randn(net[-1].bias.shape, generator=gen))
    return net


class _ColumnVote(nn.Module):
    """Logits = the mean of each pixel column: an input W pixels wide gets W classes (the output width
    depends on the input's size), and the brightest column wins."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x.mean(dim=(1, 2))


def column_vote(num_classes: int = 4) -> nn.Module:
    return _ColumnVote()


class _RaggedBatch(nn.Module):
    """tiny_cnn for one input; for a batch, one class more than for one input: the output width
    changes between forward passes of the same input shape."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_cnn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = self.net(x)
        return out if x.shape[0] == 1 else torch.cat([out, out[:, :1]], dim=1)


def ragged_batch(num_classes: int = 4) -> nn.Module:
    return _RaggedBatch()


def identity_denoiser() -> nn.Module:
    """A denoiser that returns its input: f∘d is f."""
    return nn.Identity()


class _Constant(nn.Module):
    """Maps every image to the same one (0.5 everywhere, with a bright top-left pixel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = torch.full_like(x, 0.5)
        out[..., 0, 0] = 1.0
        return out


def constant_denoiser() -> nn.Module:
    return _Constant()


def blur_denoiser(sigma: float = 0.0) -> nn.Module:
    """A fixed 3x3 box blur per channel (3 channels), a little stronger at higher sigma."""
    conv = nn.Conv2d(3, 3, 3, padding=1, groups=3, bias=False, padding_mode="replicate")
    with torch.no_grad():
        conv.weight.fill_(1.0 / 9.0)
        conv.weight[:, :, 1, 1] += 1.0 - min(sigma, 1.0)
        conv.weight /= conv.weight.sum(dim=(2, 3), keepdim=True)
    return conv


def cnn_from_file(path: str, num_classes: int = 4) -> nn.Module:
    """A factory that loads its own trained weights (here: a state dict of tiny_cnn at ``path``)."""
    net = tiny_cnn(num_classes=num_classes)
    net.load_state_dict(torch.load(path, weights_only=True))
    return net
