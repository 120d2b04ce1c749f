"""The ``rscert`` command (thin: parsing and messages; the work lives in the modules it calls)."""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Sequence

from pydantic import ValidationError
from pydantic_core import PydanticUndefined

from rscert.config.certify import CERTIFY_ONLY, CertifyConfig, load_config
from rscert.config.files import ConfigFileError, base_type, format_validation_error, json_mapping
from rscert.errors import ConfigError

# Imported only by the subcommands that compute (torch, Ray, Polars stay out of --help and analyze).
_SHORT_HELP = {
    "data": "shards: paths, globs, {000..009} ranges, fsspec URLs or pipe: commands",
    "model": "torchvision name (resnet50), rscert arch (cifar_resnet110, small_cnn) or package.module:factory",
    "preset": "imagenet (resize 256, crop 224) | cifar | none: inputs to [0, 1]",
    "executor": "local (in this process) or ray",
    "ray_address": "Ray cluster to join (auto, or host:port); default: RAY_ADDRESS, else start a local Ray",
}
_PREDICT_HELP = {
    "n": "noise samples per input (PREDICT's N)",
    "alpha": "the test of the two leading classes (two-sided binomial test of the top two counts; --vote soft: "
             "empirical Bernstein bounds, docs/bounds.md): abstain unless p <= alpha",
    "unit_size": "inputs per work unit (one Parquet file each)",
}
_NOT_FOR_PREDICT = set(CERTIFY_ONLY)  # accepted and ignored by predict (a certify job file works), with a warning
_HIDDEN = {"mode"}  # set by the subcommand


def _default_text(info) -> str:
    """' (default: X)' from the pydantic field, ' (required)' for a field without default."""
    if info.is_required():
        return " (required; here or in --config)"
    value = info.default
    if value is None or value is PydanticUndefined:
        return ""
    if isinstance(value, bool):
        return f" (default: {'on' if value else 'off'})"
    if isinstance(value, int):
        return f" (default: {value:,})"
    if isinstance(value, float):
        return f" (default: {value:g})"
    return f" (default: {value})"


def _add_config_options(parser: argparse.ArgumentParser, model: type = CertifyConfig, mode: str | None = None) -> None:
    for name, info in model.model_fields.items():
        if name in _HIDDEN:
            continue
        flag = "--" + name.replace("_", "-")
        kind = base_type(info.annotation)
        helptext = (_PREDICT_HELP.get(name) if mode == "predict" else None) or _SHORT_HELP.get(name) \
            or info.description or ""
        helptext = helptext.replace("%", "%%") + _default_text(info)  # argparse formats help with %
        if mode == "predict" and name in _NOT_FOR_PREDICT:
            helptext = argparse.SUPPRESS  # accepted and ignored, with a warning (see config.load_config)
        is_literal = typing.get_origin(info.annotation) is typing.Literal
        choices = list(typing.get_args(info.annotation)) if is_literal else None
        if kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        elif name == "data":
            parser.add_argument(flag, dest=name, nargs="+", default=None, help=helptext)
        elif name == "radii":
            parser.add_argument(flag, dest=name, type=_radii, default=None, help=helptext)
        elif kind is dict:
            parser.add_argument(flag, dest=name, type=json_mapping, default=None, help=helptext)
        else:
            parser.add_argument(flag, dest=name, type=kind, default=None, choices=choices, help=helptext)


def _certify(args: argparse.Namespace) -> int:
    """``rscert certify`` and ``rscert predict``: one job runner, the subcommand sets the mode."""
    from rscert.errors import ModelError
    from rscert.run.local import run_local
    from rscert.run.prepare import prepare
    from rscert.run.report import report
    from rscert.store.results import OutputError
    from rscert.store.storage import StorageError

    overrides = {name: getattr(args, name, None) for name in CertifyConfig.model_fields}
    overrides["mode"] = args.mode
    if overrides.get("data") is not None and len(overrides["data"]) == 1:
        overrides["data"] = overrides["data"][0]
    try:
        config = load_config(args.config, overrides, warn=_err)
        remote_facts = None
        if config.executor == "ray":  # the model is loaded in a Ray task: this process never imports torch
            from rscert.run.ray_facts import remote_model_facts as remote_facts
        job = prepare(config, log=_err, early=True, announce=True, remote_facts=remote_facts)
    except ValidationError as exc:
        _err(format_validation_error(exc))
        return 2
    except (ConfigFileError, ConfigError, OutputError, ModelError, StorageError) as exc:
        _err(f"error: {exc}")
        return 2
    try:
        if config.executor == "ray":
            from rscert.run.ray_runner import run_ray

            run_ray(job, log=_err)
        else:
            run_local(job)
        return report(job, log=print)
    except (ConfigError, OutputError, StorageError) as exc:  # Ray unreachable, storage lost, an index write
        _err(f"error: {exc}")
        return 2
    finally:
        job.close()


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Parser(argparse.ArgumentParser):
    """argparse without abbreviations: ``--norm l2`` is an error, not ``--normalize l2``. Subcommand
    parsers are of the same class (``add_subparsers`` uses the parent's), so none takes abbreviations."""

    def __init__(self, *args, allow_abbrev: bool = False, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, allow_abbrev=allow_abbrev, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rscert", description="Certify classifiers with randomized smoothing.")
    sub = parser.add_subparsers(dest="command", required=True)
    cert = sub.add_parser("certify", help="certify every selected input of WebDataset shards into Parquet",
                          description="CERTIFY (Cohen et al. 2019): a certified radius per input (L2 for Gaussian "
                                      "noise; --noise and --norm for others, docs/families.md), one Parquet "
                                      "row each. Settings come from --config and the command line (which wins).")
    cert.add_argument("--config", help="YAML file of settings (command-line values override it)")
    _add_config_options(cert, mode="certify")
    cert.set_defaults(func=_certify, mode="certify")
    pred = sub.add_parser("predict", help="PREDICT every selected input: the smoothed classifier's prediction or "
                                          "abstain",
                          description="PREDICT (Cohen et al. 2019): n noise samples per input, a two-sided binomial "
                                      "test of the top two counts, abstain (-1) when p > alpha. Same inputs, "
                                      "executors, units, resume and output layout as certify.")
    pred.add_argument("--config", help="YAML file of settings (command-line values override it)")
    _add_config_options(pred, mode="predict")
    pred.set_defaults(func=_certify, mode="predict")
    for extra in _EXTRA_COMMANDS:
        extra(sub)
    return parser


def _radii(text: str) -> list[float]:
    try:
        return [float(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--radii: expected numbers, got {text!r}") from None


def _analyze(args: argparse.Namespace) -> int:
    from rscert.analysis.aggregate import analyze
    from rscert.analysis.exports import check_targets, write_outputs
    from rscert.analysis.result import AnalysisError
    from rscert.analysis.tables import terminal_table
    from rscert.store.storage import StorageError

    corrections = list(args.correction or []) + (["cp"] if args.certificate_correction else [])
    targets = {name.replace("_", "-"): getattr(args, name) for name in [*ANALYZE_OUTPUTS, "plot"]}
    try:
        check_targets(targets)  # before any work: every output goes through fsspec, or is refused
    except StorageError as exc:
        _err(f"error: {exc}")
        return 2
    try:
        result = analyze(args.outputs, radii=args.radii, step=args.step, ci=args.ci, alpha=args.alpha,
                         corrections=corrections, rho=args.rho, pool_seeds=args.pool_seeds, band=args.band,
                         per_class=bool(args.per_class), references=args.reference or ())
    except (AnalysisError, ConfigError) as exc:
        _err(f"error: {exc}")
        return 2
    print(terminal_table(result))
    written = write_outputs(result, **{name: getattr(args, name) for name in ANALYZE_OUTPUTS})
    if args.plot:
        from rscert.analysis.plots import write_plots

        written += write_plots(result, args.plot, bands=args.bands)
    for path in written:
        print(f"wrote {path}")
    return 0


ANALYZE_OUTPUTS = {
    "markdown": "the table as Markdown", "latex": "the table as LaTeX (booktabs)", "csv": "the summary as CSV",
    "parquet": "the summary as Parquet", "curves_csv": "the curves (radius grid per run) as CSV",
    "curves_parquet": "the curves as Parquet", "envelope_csv": "the envelope (best run per radius) as CSV",
    "envelope_parquet": "the envelope as Parquet", "json": "the summary (one object per run, per-class rows) as JSON",
    "per_class": "certified accuracy per class and run: CSV, or .parquet / .md"}
"""analyze's file outputs (and --plot, a folder): each goes through fsspec like the inputs."""


def _import_logs(args: argparse.Namespace) -> int:
    from rscert.analysis.import_logs import LogError, import_logs
    from rscert.store.results import OutputError

    try:
        written = import_logs(args.paths, args.out, sigma=args.sigma, dataset=args.dataset, model=args.model,
                              alpha=args.alpha)
    except (LogError, OutputError) as exc:
        _err(f"error: {exc}")
        return 2
    print(f"imported {len(written)} log(s) into {args.out}")
    return 0


def _add_analysis_commands(sub) -> None:
    from rscert.analysis.references import REFERENCES  # counts only: no polars, no torch

    an = sub.add_parser("analyze", help="certified-accuracy tables, curves and plots from result folders",
                        description="One summary row per run (configuration); see docs/analysis.md.")
    an.add_argument("outputs", nargs="+", help="result folders or Parquet files (rscert or imported logs)")
    an.add_argument("--radii", type=_radii, default=None, help="radii for the table, e.g. '0 0.25 0.5'")
    an.add_argument("--step", type=float, default=0.01, help="grid step of the curves (default 0.01)")
    an.add_argument("--ci", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    an.add_argument("--alpha", type=float, default=None,
                    help="re-bound stored counts at this alpha (refused for sequential rows)")
    an.add_argument("--pool-seeds", action="store_true",
                    help="pool runs that differ only in run id and seed (an input may still count only once)")
    an.add_argument("--correction", action="append", choices=["cp", "testset", "published"], default=None,
                    help="lower ends that allow for wrong certificates: cp (rscert, test distribution), testset "
                         "(exact, this test set), published (the published analysis' expression); repeatable")
    an.add_argument("--certificate-correction", action="store_true", help="the same as --correction cp")
    an.add_argument("--band", choices=["pointwise", "dkw", "bonferroni"], default="pointwise",
                    help="the curves' band: pointwise Clopper-Pearson intervals (default; one radius at a time), or a "
                         "band simultaneous over every radius: dkw (Dvoretzky-Kiefer-Wolfowitz) or bonferroni (over "
                         "the --step grid); with --correction cp also its corrected lower edge")
    an.add_argument("--rho", type=float, default=0.001,
                    help="failure probability of --correction testset/published (default 0.001, as published)")
    for name, text in ANALYZE_OUTPUTS.items():
        an.add_argument("--" + name.replace("_", "-"), help=f"write {text} (a local path or any fsspec URL)")
    an.add_argument("--reference", action="append", choices=sorted(REFERENCES), default=None,
                    help="add published results as reference rows of the tables (cohen2019: Cohen et al. 2019's "
                         "ImageNet and CIFAR-10 tables, as counts of their logs); repeatable")
    an.add_argument("--plot", help="folder (or URL) for PNG and SVG figures")
    an.add_argument("--bands", action=argparse.BooleanOptionalAction, default=True,
                    help="draw the confidence bands of the curves (default: on)")
    an.set_defaults(func=_analyze)
    im = sub.add_parser("import-logs", help="convert CERTIFY/PREDICT logs of other code bases into Parquet")
    im.add_argument("paths", nargs="+", help="log files or folders (searched recursively)")
    im.add_argument("--out", required=True, help="output folder")
    im.add_argument("--sigma", type=float, default=None, help="noise level (default: from sigma_X in the path)")
    im.add_argument("--dataset", default=None, help="dataset name (default: from the path)")
    im.add_argument("--model", default=None, help="model name (default: from the path)")
    im.add_argument("--alpha", type=float, default=None,
                    help="the alpha the logs were made with, recorded for --correction (published logs: 0.001)")
    im.set_defaults(func=_import_logs)


def _train(args: argparse.Namespace) -> int:
    from rscert.config.files import load_yaml
    from rscert.config.train import TrainConfig
    from rscert.errors import ModelError
    from rscert.train import train

    overrides = {name: getattr(args, name) for name in TrainConfig.model_fields}
    if overrides.get("data") is not None and len(overrides["data"]) == 1:
        overrides["data"] = overrides["data"][0]
    try:
        config = TrainConfig(**{**load_yaml(args.config), **{k: v for k, v in overrides.items() if v is not None}})
        metrics = train(config, log=_err)
    except ValidationError as exc:
        _err(format_validation_error(exc))
        return 2
    except (ConfigFileError, ConfigError, ModelError) as exc:
        _err(f"error: {exc}")
        return 2
    what = config.model if config.denoiser is None else f"denoiser {config.denoiser} ({config.objective} objective)"
    print(f"trained {what} for {config.epochs} epochs with {config.noise} noise at sigma={config.sigma}: "
          f"checkpoint {config.out}/checkpoint.pt; last epoch {metrics}")
    return 0


def _convert_guided(args: argparse.Namespace) -> int:
    from rscert.errors import ModelError
    from rscert.models.guided import convert_guided

    try:
        folder = convert_guided(args.checkpoint, args.out, preset=args.preset)
    except ModelError as exc:
        _err(f"error: {exc}")
        return 2
    print(f"wrote {folder}: use --denoiser diffusion:{folder}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from rscert.demo import run_demo

    try:
        return run_demo(args.out, log=_err, n=args.n, epochs=args.epochs, skip=args.skip)
    except ConfigError as exc:
        _err(f"error: {exc}")
        return 2


def _add_train_and_demo(sub) -> None:
    from rscert.config.train import TrainConfig

    tr = sub.add_parser("train", help="noise-augmented training of a classifier, or of a denoiser (--denoiser), "
                                      "in-process or on Ray Train workers")
    tr.add_argument("--config", help="YAML file of settings (command-line values override it)")
    _add_config_options(tr, TrainConfig)
    tr.set_defaults(func=_train)
    demo = sub.add_parser("demo", help="digits end to end: shards, training, certification on local Ray, analysis")
    demo.add_argument("--out", default="demo-output")
    demo.add_argument("--n", type=int, default=10_000, help="estimation samples per input (default 10,000)")
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--skip", type=int, default=1, help="certify every k-th test digit (default: all)")
    demo.set_defaults(func=_demo)
    conv = sub.add_parser("convert-guided", help="convert an OpenAI guided-diffusion UNet checkpoint into a "
                                                 "diffusers folder for --denoiser diffusion:FOLDER",
                          description="Rename the tensors of a guided-diffusion checkpoint (e.g. "
                                      "256x256_diffusion_uncond.pt) into a diffusers UNet2DModel and write it with "
                                      "its DDPM scheduler (docs/denoised.md). Offline; nothing is downloaded.")
    conv.add_argument("checkpoint", help="the guided-diffusion .pt file")
    conv.add_argument("out", help="folder to write (unet/ and scheduler/)")
    conv.add_argument("--preset", default="imagenet256-uncond",
                      help="architecture preset (default: imagenet256-uncond)")
    conv.set_defaults(func=_convert_guided)


def _index(args: argparse.Namespace) -> int:
    from rscert.data.indexing import write_sidecars
    from rscert.data.shards import ShardError, expand_shards

    try:
        shards = expand_shards(args.data, args.storage_options)
    except ShardError as exc:
        _err(f"error: data: {exc}")
        return 2
    shards = [u for u in shards if not u.startswith("pipe:")]
    if not shards:
        _err(f"error: data: no shard that can carry a sidecar index matched {args.data!r} (pipe: streams cannot)")
        return 2
    failed = 0
    for url, what, ok in write_sidecars(shards, args.storage_options, args.force, args.threads):
        print(f"{url}: {what}", file=sys.stdout if ok else sys.stderr)
        failed += not ok
    print(f"{len(shards) - failed} of {len(shards)} shard(s) indexed", file=sys.stderr)
    return 1 if failed else 0


def _compact(args: argparse.Namespace) -> int:
    from rscert.store.compact import compact
    from rscert.store.results import OutputError

    try:
        parts = compact(args.out, args.storage_options, args.files_per_part, log=print)
    except OutputError as exc:
        _err(f"error: {exc}")
        return 2
    print(f"{args.out}: {len(parts)} compacted file(s)")
    return 0


def _add_data_commands(sub) -> None:
    ix = sub.add_parser("index", help="write each shard's sample index (keys, byte offsets) next to it",
                        description="A sidecar <shard>.rscert-index.json per shard (format: docs/schema.md): units "
                                    "then read only their samples' bytes, and planning never scans the shard.")
    ix.add_argument("data", nargs="+", help="shards: paths, globs, {000..009} ranges, fsspec URLs")
    ix.add_argument("--storage-options", type=json_mapping, default=None, help="fsspec options, as JSON")
    ix.add_argument("--force", action="store_true", help="index again even where the sidecar matches the shard")
    ix.add_argument("--threads", type=int, default=16, help="shards indexed at once (default 16)")
    ix.set_defaults(func=_index)
    co = sub.add_parser("compact", help="merge a finished run's unit files into a few large Parquet files",
                        description="Atomic and resumable (rerun it after a crash); certify and analyze read "
                                    "either layout the same way.")
    co.add_argument("out", help="the run's output folder or URL")
    co.add_argument("--storage-options", type=json_mapping, default=None, help="fsspec options, as JSON")
    co.add_argument("--files-per-part", type=int, default=4096, help="unit files per compacted file (default 4096)")
    co.set_defaults(func=_compact)


_EXTRA_COMMANDS: list = [_add_analysis_commands, _add_data_commands, _add_train_and_demo]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
