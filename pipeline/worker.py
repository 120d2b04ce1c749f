"""Certify one work unit and commit its Parquet file: the code every executor runs (no Ray here).

A :class:`UnitWorker` loads the model once and keeps it for all the units it is given.
"""

from __future__ import annotations

import os
import socket
import time
from collections import defaultdict

import torch

from .certify import NOISE, SmoothingParams, certify, certify_sequential
from .config import CertifyConfig
from .data import Decoded, Unit, read_unit
from .models import load_model
from .results import Store, table_from_rows
from .sampler import Sampler, SamplerOptions


def _error_row(item: Decoded, params: SmoothingParams) -> dict:
    return {"key": item.key, "label": item.label, "prediction": None, "radius": None, "correct": None,
            "n0": params.n0, "n": params.n, "alpha": params.alpha, "sigma": params.sigma, "noise": NOISE,
            "seed": params.seed, "status": item.status, "error": item.error}


class UnitWorker:
    """Loads the model once; :meth:`run` certifies a unit and commits it, returning a small summary."""

    def __init__(self, config: CertifyConfig, run: dict) -> None:
        self.config = config
        self.run_info = run  # run_id, fingerprint, dataset, model facts
        if config.device is None and not torch.cuda.is_available():
            torch.set_num_threads(max(1, int(os.environ.get("RSCERT_THREADS", torch.get_num_threads()))))
        loaded = load_model(config.model, config.checkpoint, config.num_classes, config.normalize,
                            config.trust_checkpoint)
        options = SamplerOptions(batch_size=config.batch_size, precision=config.precision,
                                 channels_last=config.channels_last, compile=config.compile, clamp=config.clamp)
        self.sampler = Sampler(loaded.model, options, device=config.device, num_classes=loaded.num_classes)
        self.params = SmoothingParams(sigma=config.sigma, n0=config.n0, n=config.n, alpha=config.alpha,
                                      seed=config.seed)
        self.store = Store(config.out)

    def _certify_group(self, items: list[Decoded]) -> list[dict]:
        """Certify decoded inputs of one shape; a label outside the model's classes fails its row."""
        x = torch.stack([it.tensor for it in items])
        classes = self.sampler.ensure_num_classes(x)
        fits = [it.label is None or 0 <= it.label < classes for it in items]
        rows = []
        for it, ok in zip(items, fits, strict=True):
            if not ok:
                it.status, it.error = "invalid_label", f"label {it.label} does not fit {classes} classes"
                rows.append(_error_row(it, self.params))
        keep = [i for i, ok in enumerate(fits) if ok]
        if keep:
            args = (self.sampler, x[keep], [items[i].key for i in keep], [items[i].label for i in keep], self.params)
            if self.config.sampling == "sequential":
                rows += certify_sequential(*args, radii=self.config.table_radii())
            else:
                rows += certify(*args)
        return rows

    def run(self, unit: Unit) -> dict:
        start = time.perf_counter()
        items = list(read_unit(unit, self.config.preset))  # raises ShardError for a bad shard
        rows: list[dict] = [_error_row(it, self.params) for it in items if it.status != "ok"]
        by_shape: dict[tuple, list[Decoded]] = defaultdict(list)
        for it in items:
            if it.status == "ok":
                by_shape[tuple(it.tensor.shape)].append(it)
        for group in by_shape.values():
            rows += self._certify_group(group)
        meta = {it.key: it for it in items}
        info = self.run_info
        for row in rows:
            it = meta[row["key"]]
            row.update(run_id=info["run_id"], unit_id=unit.unit_id, shard=unit.shard, index=it.index,
                       model=info["model"], checkpoint_sha256=info["checkpoint_sha256"],
                       dataset=info["dataset"], split=info["split"], mode="certify")
        rows.sort(key=lambda r: r["index"])
        table = table_from_rows(rows, {"rscert.fingerprint": info["fingerprint"], "rscert.run_id": info["run_id"],
                                       "rscert.unit_id": unit.unit_id})
        self.store.commit_unit(unit.unit_id, table)
        elapsed = time.perf_counter() - start
        summary = {
            "unit_id": unit.unit_id,
            "rows": len(rows),
            "ok": sum(r["status"] == "ok" for r in rows),
            "errors": sum(r["status"] != "ok" for r in rows),
            "abstained": sum(r["status"] == "ok" and r["prediction"] == -1 for r in rows),
            "samples": sum(self.params.n0 + r["n"] for r in rows if r["status"] == "ok"),  # n: drawn
            "seconds": elapsed,
            "worker": f"{socket.gethostname()}:{os.getpid()}",
        }
        self.store.record_execution(unit.unit_id, summary)
        return summary
