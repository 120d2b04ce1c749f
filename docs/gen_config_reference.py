"""Writes docs/configuration.md from the pydantic models (run after changing a setting;
tests/test_docs.py fails while the file is stale).   python docs/gen_config_reference.py"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rscert.config.certify import CertifyConfig  # noqa: E402
from rscert.config.train import TrainConfig  # noqa: E402

HEADER = """# Configuration reference

Generated from the pydantic models by `docs/gen_config_reference.py`; do not edit by hand.
Every setting works as a command-line flag and as a key of the `--config` YAML file (`-` or `_`);
the command line overrides the file. A bad value fails before any compute, naming the setting.
"""


def table(model: type) -> str:
    lines = ["| flag / YAML key | default | meaning |", "|---|---|---|"]
    for name, info in model.model_fields.items():
        default = "**required**" if info.is_required() else f"`{info.default!r}`"
        lines.append(f"| `--{name.replace('_', '-')}` / `{name}` | {default} | {info.description or ''} |")
    return "\n".join(lines)


def render() -> str:
    return (HEADER + "\n## `rscert certify` (and `jobs/certify.py`)\n\n" + table(CertifyConfig)
            + "\n\n## `rscert train` (and `jobs/train.py`)\n\n" + table(TrainConfig) + "\n")


if __name__ == "__main__":
    (ROOT / "docs" / "configuration.md").write_text(render())
