"""Settings files and messages shared by every command's configuration (certify's and train's)."""

from __future__ import annotations

import argparse
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


class ConfigFileError(ValueError):
    """A settings file that is missing, not YAML, or not a mapping."""


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if loc == "config" and ":" in msg:
            loc, _, msg = msg.partition(":")
        lines.append(f"{loc.replace('_', '-')}: {msg.strip()}")
    return "bad configuration:\n  " + "\n  ".join(lines)


def load_yaml(path: str | None) -> dict[str, Any]:
    """Settings from a YAML mapping (keys with - or _), or {} without a file."""
    values: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigFileError(f"config: no such file {path!r}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigFileError(f"config: {path!r} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigFileError(f"config: {path!r} must hold a mapping of settings")
        values.update({k.replace("-", "_"): v for k, v in loaded.items()})
    return values


def json_mapping(text: str) -> dict:
    """A JSON object given on the command line (``--storage-options``, ``--model-args``)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def base_type(annotation):  # noqa: ANN001, ANN201
    """The plain type a setting's annotation asks the command line for (str for literals and lists)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return base_type(args[0])
    if origin is typing.Literal:
        return str
    if origin is list:
        return str
    if origin is dict:
        return dict
    return annotation
