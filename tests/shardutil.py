"""Write real WebDataset tar shards (real PNG/JPEG bytes) for tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from webdataset import TarWriter


def image_bytes(rng: np.random.Generator, size: int = 16, fmt: str = "PNG") -> bytes:
    array = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def write_shards(folder: Path, shards: int = 3, per_shard: int = 10, size: int = 16, classes: int = 4,
                 seed: int = 0, fmt: str = "png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for s in range(shards):
        path = folder / f"data-{s:06d}.tar"
        with TarWriter(str(path)) as sink:
            for i in range(per_shard):
                key = f"s{s:02d}_{i:04d}"
                sample = {"__key__": key, fmt: image_bytes(rng, size, "PNG" if fmt == "png" else "JPEG"),
                          "cls": str(int(rng.integers(classes))).encode()}
                sink.write(sample)
        paths.append(path)
    return paths
