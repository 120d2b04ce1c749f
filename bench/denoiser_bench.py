"""The cost of a denoiser per noisy sample against the classifier's, in one run on one device.

For each setting (CIFAR-10 32x32, ImageNet 224x224) it times, through rscert's sampler (noise drawn
by rscert's generator, batches packed as in certification), samples per second of

  * f          -- the classifier alone (the usual base classifier);
  * f∘d        -- the same classifier behind each denoiser (:class:`rscert.models.denoisers.Denoised`);

and prints ms per sample and the ratio (f∘d) / f, i.e. how many times more a certificate costs
behind that denoiser. Weights are random (seeded): the cost does not depend on them. Denoisers:
DnCNN (64 channels, depth 17; the published ``cifar_dncnn`` / ``imagenet_dncnn``), its wide variant
(128), MemNet (64 channels, 3 x 6 blocks), and a one-shot diffusion denoiser on a diffusers
UNet2DModel: the CIFAR-10 DDPM's architecture (35.7M parameters) at 32x32, the guided-diffusion
ImageNet 256x256 unconditional architecture (552M parameters, converted layout) at 224x224. Each
variant runs --repeats times, interleaved; medians are reported.

    python bench/denoiser_bench.py --setting cifar10 --batch 64 --samples 128                 # CPU
    python bench/denoiser_bench.py --setting imagenet --batch 2 --samples 2 --repeats 1       # CPU
    python bench/denoiser_bench.py --setting cifar10 --batch 1000 --samples 20000 --precision bf16   # GPU
    python bench/denoiser_bench.py --setting imagenet --batch 64 --samples 512 --precision bf16      # GPU
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from rscert.models.archs import CifarResNet
from rscert.models.denoiser_archs import DnCNN, MemNet
from rscert.models.denoisers import Denoised
from rscert.models.diffusion import OneShotDenoiser
from rscert.models.guided import GuidedConfig
from rscert.models.load import wrap
from rscert.sampling.sampler import Sampler, SamplerOptions, default_device

DDPM_CIFAR10 = {"sample_size": 32, "block_out_channels": (128, 256, 256, 256), "layers_per_block": 2,
                "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")}
"""The architecture of the public CIFAR-10 DDPM (Ho et al. 2020) as a diffusers UNet2DModel."""


def _linear_abar(steps: int = 1000) -> torch.Tensor:
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, steps, dtype=torch.float64), 0)


def _diffusion(config: dict, sigma: float) -> nn.Module:
    from diffusers import UNet2DModel

    return OneShotDenoiser(UNet2DModel(**config), _linear_abar(), sigma)


def settings(name: str, sigma: float) -> tuple[tuple[int, int, int], Callable[[], nn.Module], dict]:
    """(input shape, classifier factory, {denoiser name: factory})."""
    if name == "cifar10":
        return (3, 32, 32), lambda: wrap(CifarResNet(110, 10), "cifar"), {
            "dncnn": lambda: DnCNN(3, 64, 17), "dncnn_wide": lambda: DnCNN(3, 128, 17),
            "memnet": lambda: MemNet(3, 64, 3, 6), "ddpm-cifar10 (one-shot)": lambda: _diffusion(DDPM_CIFAR10, sigma)}
    import torchvision

    return (3, 224, 224), lambda: wrap(torchvision.models.resnet50(), "imagenet"), {
        "dncnn": lambda: DnCNN(3, 64, 17),
        "guided-256 uncond (one-shot)": lambda: _diffusion(GuidedConfig().unet_config(), sigma)}


def samples_per_second(model: nn.Module, shape: tuple, args: argparse.Namespace, device: torch.device) -> float:
    sampler = Sampler(model, SamplerOptions(batch_size=args.batch, precision=args.precision), device=device,
                      num_classes=None)
    x = torch.rand(1, *shape)
    sampler.counts(x, ["warm"], args.sigma, min(args.batch, args.samples), 0, "selection")  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    sampler.counts(x, ["0"], args.sigma, args.samples, 0, "estimation")
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=["cifar10", "imagenet"], default="cifar10")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--samples", type=int, default=128, help="noisy samples timed per variant")
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="denoisers to time (default: all of the setting)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = torch.device(args.device) if args.device else default_device()
    torch.manual_seed(0)
    shape, make_classifier, denoisers = settings(args.setting, args.sigma)
    classifier = make_classifier().eval()
    variants = {"f (classifier alone)": classifier}
    for name, make in denoisers.items():
        if not args.only or name in args.only:
            variants[f"f∘d, d = {name}"] = Denoised(make().eval(), classifier)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, model in variants.items():
            rates[name].append(samples_per_second(model, shape, args, device))
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in variants.items()}
    base = statistics.median(rates["f (classifier alone)"])
    print(f"{args.setting} {shape}, device {device}, precision {args.precision}, batch {args.batch}, "
          f"{args.samples} samples x {args.repeats} repeats (medians), sigma {args.sigma}")
    print(f"{'base classifier':<44} {'params':>12} {'samples/s':>11} {'ms/sample':>10} {'x cost of f':>12}")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"{name:<44} {params[name]:>12,} {rate:>11.1f} {1000 / rate:>10.3f} {base / rate:>12.2f}")


if __name__ == "__main__":
    main()
