"""What the device check runs on (bench/gpu_check.sh, step 01_env): versions, the device, which optional
packages import, and that rscert, its command line and the benchmarks import here."""

from __future__ import annotations

import importlib
import platform
import sys

import torch

OPTIONAL = ("torchvision", "numpy", "scipy", "pyarrow", "fsspec", "PIL", "tqdm", "pydantic", "pydantic_core",
            "yaml", "webdataset", "pytest", "triton", "numba", "ray", "polars", "statsmodels")
NEEDED = ("rscert", "rscert.cli", "bench.sampler_bench", "bench.certify_bench")


def main() -> int:
    print("python", sys.version.split()[0], platform.platform())
    print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        print(f"device: {props.name}, {props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs, "
              f"capability {props.major}.{props.minor}")
    else:
        print("device: no CUDA device")
    for name in OPTIONAL:
        try:
            mod = importlib.import_module(name)
            print(f"  {name:14} {getattr(mod, '__version__', '?')}")
        except Exception as exc:  # noqa: BLE001 - report whatever stops the import
            print(f"  {name:14} not importable ({type(exc).__name__}: {exc})")
    failed = 0
    for name in NEEDED:
        try:
            mod = importlib.import_module(name)
            print(f"import ok: {name} ({getattr(mod, '__file__', '')})")
        except Exception as exc:  # noqa: BLE001
            failed += 1
            print(f"IMPORT FAILED: {name}: {type(exc).__name__}: {exc}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
