"""Certify one work unit and commit its Parquet file: the code every executor runs (no Ray here).

A :class:`UnitWorker` loads the model once and keeps it for all the units it is given.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections import defaultdict

import torch

from rscert.config.certify import CertifyConfig
from rscert.constants import LATTICE_NOISE
from rscert.data.decode import Decoded, read_unit
from rscert.data.plan import Unit
from rscert.data.shards import StreamCursor
from rscert.models.denoisers import Denoised, LoadedDenoiser, load_denoiser
from rscert.models.load import LoadedModel, ModelError, load_model
from rscert.run.probe import check_width, output_width
from rscert.sampling.certify import SmoothingParams, certify, certify_sequential, predict, setting_columns
from rscert.sampling.discrete_noise import off_grid
from rscert.sampling.sampler import Sampler, SamplerOptions
from rscert.store.results import Store, table_from_rows
from rscert.store.tally import RowFacts


def _error_row(item: Decoded, params: SmoothingParams, mode: str = "certify") -> dict:
    return {"label": item.label, "prediction": None, "radius": None, "correct": None,
            "n0": params.n0 if mode == "certify" else None, "n": params.n, "alpha": params.alpha,
            "sigma": params.sigma, **setting_columns(params),
            "seed": params.seed, "status": item.status, "error": item.error}


class UnitWorker:
    """Loads the model once; :meth:`run` certifies (or, in predict mode, predicts) a unit and commits
    it, returning a small summary (the driver records executions, in batches). ``loaded`` hands over a
    model the caller already loaded (local mode).

    The model is checked before any unit: its weights must hash to the run's ``weights_sha256`` (the
    classifier the run was prepared with, whatever built it), and a denoiser's to the run's
    ``denoiser_sha256``, or no unit is ever committed by it. With a denoiser the base classifier is
    f∘d (:class:`rscert.models.denoisers.Denoised`); ``denoiser`` hands over one already loaded."""

    def __init__(self, config: CertifyConfig, run: dict, loaded: LoadedModel | None = None,
                 denoiser: LoadedDenoiser | None = None) -> None:
        self.config = config
        self.run_info = run  # run_id, fingerprint, dataset, model facts, input_shape
        self.mode = config.mode
        if config.device is None and not torch.cuda.is_available():
            torch.set_num_threads(max(1, int(os.environ.get("RSCERT_THREADS", torch.get_num_threads()))))
        if loaded is None:
            loaded = load_model(config.model, config.checkpoint, config.num_classes, config.normalize,
                                config.trust_checkpoint, config.random_init,
                                storage_options=config.storage_options, model_args=config.model_args,
                                weights_from_factory=config.weights_from_factory)
        expected = run.get("weights_sha256")
        if loaded.weights_sha256 != expected:
            raise ModelError(
                f"model: this worker built {loaded.spec!r} with weights {loaded.weights_sha256[:16]}..., not the "
                f"run's {str(expected)[:16]}...: it would certify another classifier, so it commits nothing. "
                "Building the model must be deterministic (a checkpoint, or a factory that seeds its init).")
        self.model = loaded.model
        if config.denoiser is not None:
            if denoiser is None:
                denoiser = load_denoiser(config.denoiser, config.sigma, config.trust_checkpoint,
                                         config.storage_options, output_size=loaded.input_size)
            if denoiser.weights_sha256 != run.get("denoiser_sha256"):
                raise ModelError(
                    f"denoiser: this worker built {denoiser.spec!r} with weights {denoiser.weights_sha256[:16]}..., "
                    f"not the run's {str(run.get('denoiser_sha256'))[:16]}...: it would certify another base "
                    "classifier, so it commits nothing. Building the denoiser must be deterministic.")
            self.model = Denoised(denoiser.module, loaded.model)
        options = SamplerOptions(batch_size=config.batch_size, precision=config.precision,
                                 channels_last=config.channels_last, compile=config.compile,
                                 compile_noise=config.compile_noise, clamp=config.clamp)
        # the class count the votes are counted in: configured, from the checkpoint, or the model's width on
        # the run's reference input (probed in prepare); every forward pass is checked against it
        self.sampler = Sampler(self.model, options, device=config.device,
                               num_classes=loaded.num_classes or run.get("num_classes"), noise=config.noise)
        self.params = SmoothingParams(sigma=config.sigma, n0=config.n0, n=config.n, alpha=config.alpha,
                                      seed=config.seed, noise=config.noise, norm=config.norm, bound=config.bound,
                                      vote=config.vote, temperature=config.temperature)
        self.store = Store(config.out, config.storage_options)
        self.cursor = StreamCursor(config.storage_options)  # a pipe: shard's units, in order, over one stream
        reference = run.get("input_shape")
        self.good_shapes: set[tuple] = {tuple(reference)} if reference else set()  # shapes the model took
        self.bad_shapes: dict[tuple, str] = {}  # shape -> why the model cannot take it

    def _shape_error(self, shape: tuple, example: torch.Tensor) -> str | None:
        """Why the model cannot take inputs of ``shape`` (None if it can), from one forward pass, once
        per shape. The output width is checked against --num-classes on the way (a mismatch raises:
        the configuration is wrong), then against the class count the votes are counted in: a model
        whose width depends on the input's size cannot vote for inputs of this shape (their rows fail,
        ``shape_error``). A failing shape is the input's fault only if the model has worked on another
        one; else this raises."""
        if shape in self.bad_shapes:
            return self.bad_shapes[shape]
        if shape in self.good_shapes:  # the run's reference shape was probed (width included) in prepare
            return None
        try:
            width = output_width(self.model, example.to(self.sampler.device))
        except ModelError:
            raise
        except Exception as exc:
            if not self.good_shapes - {shape}:
                raise  # the model fails on the only shape seen: not the input's fault
            known = ", ".join(str(s) for s in sorted(self.good_shapes))
            reason = (f"the model cannot take inputs of shape {shape} (it takes {known}): "
                      f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
            self.bad_shapes[shape] = reason
            return reason
        check_width(width, self.config.num_classes)
        counted = self.sampler.num_classes
        if counted is not None and width != counted:
            known = ", ".join(str(s) for s in sorted(self.good_shapes)) or "the first inputs"
            reason = (f"the model outputs {width} classes for inputs of shape {shape} but {counted} for {known}: "
                      "its output width depends on the input's size, and votes are counted in one class count "
                      "per run (give --num-classes, and a model whose width does not change)")
            self.bad_shapes[shape] = reason
            return reason
        self.good_shapes.add(shape)
        return None

    def _certify_group(self, shape: tuple, items: list[Decoded]) -> list[dict]:
        """Rows for decoded inputs of one shape, in order. A shape the model cannot take fails these
        rows (``shape_error``); a label outside the model's classes fails its row."""
        reason = self._shape_error(shape, items[0].tensor)
        if reason is not None:
            for it in items:
                it.status, it.error = "shape_error", reason
            return [_error_row(it, self.params, self.mode) for it in items]
        x = torch.stack([it.tensor for it in items])
        classes = self.sampler.ensure_num_classes(x)
        rows: list[dict | None] = [None] * len(items)
        keep = []
        for i, it in enumerate(items):
            if it.label is not None and not 0 <= it.label < classes:
                it.status, it.error = "invalid_label", f"label {it.label} does not fit {classes} classes"
                rows[i] = _error_row(it, self.params, self.mode)
            else:
                keep.append(i)
        if keep:
            # noise identity = the dataset index (unique in a run, whatever the keys); rows by position
            ids = [str(items[i].index) for i in keep]
            args = (self.sampler, x[keep], ids, [items[i].label for i in keep], self.params)
            if self.mode == "predict":
                computed = predict(*args)
            elif self.config.sampling == "sequential":
                shape = self.run_info.get("input_shape")  # the table's dimension: the probed input's, as prepared
                dim = math.prod(shape) if shape else math.prod(x.shape[1:])
                computed = certify_sequential(*args, radii=self.config.stop_radii(dim))
            else:
                computed = certify(*args)
            for i, row in zip(keep, computed, strict=True):
                rows[i] = row
        return rows

    def run(self, unit: Unit) -> dict:
        start = time.perf_counter()
        # raises ShardError for a bad shard
        items = list(read_unit(unit, self.config.preprocess(), self.config.storage_options, self.cursor))
        rows: list[dict | None] = [None] * len(items)
        by_shape: dict[tuple, list[int]] = defaultdict(list)
        for i, it in enumerate(items):
            if it.status == "ok" and self.params.noise == LATTICE_NOISE:
                reason = off_grid(it.tensor)  # the lattice family certifies 8-bit images only
                if reason is not None:
                    it.status, it.error = "off_grid", reason
            if it.status == "ok":
                by_shape[tuple(it.tensor.shape)].append(i)
            else:
                rows[i] = _error_row(it, self.params, self.mode)
        for shape, members in by_shape.items():
            for i, row in zip(members, self._certify_group(shape, [items[i] for i in members]), strict=True):
                rows[i] = row
        info, config = self.run_info, self.config
        # failed rows carry the class count and the sampling settings too, or the analysis would see
        # a configuration apart
        classes = self.sampler.num_classes or info.get("num_classes")
        sampling = {"sampling": config.sampling, "n_max": self.params.n} if self.mode == "certify" else {}
        identity = config.identity_columns(info)
        for it, row in zip(items, rows, strict=True):
            if row.get("num_classes") is None:
                row["num_classes"] = classes
            for name, value in sampling.items():
                row.setdefault(name, value)
            row.update(key=it.key, unit_id=unit.unit_id, shard=unit.shard, index=it.index, **identity)
        rows.sort(key=lambda r: r["index"])
        table = table_from_rows(rows, {"rscert.fingerprint": info["fingerprint"], "rscert.run_id": info["run_id"],
                                       "rscert.unit_id": unit.unit_id})
        self.store.commit_unit(unit.unit_id, table)
        elapsed = time.perf_counter() - start
        selection = 0 if self.mode == "predict" else self.params.n0
        summary = {
            "unit_id": unit.unit_id,
            "rows": len(rows),
            "ok": sum(r["status"] == "ok" for r in rows),
            "errors": sum(r["status"] != "ok" for r in rows),
            "abstained": sum(r["status"] == "ok" and r["prediction"] == -1 for r in rows),
            "samples": sum(selection + r["n"] for r in rows if r["status"] == "ok"),  # n: drawn
            "seconds": elapsed,
            "worker": f"{socket.gethostname()}:{os.getpid()}",
            "facts": RowFacts.from_table(table),  # for the closing summary (the driver never re-reads the file)
        }
        return summary
