"""The docs stay true: generated reference current, README's two commands, schema documented,
example job configs valid."""

import runpy
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from rscert.config.certify import CertifyConfig
from rscert.config.train import TrainConfig
from rscert.store.results import SCHEMA

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_reference_is_current():
    render = runpy.run_path(str(ROOT / "docs" / "gen_config_reference.py"))["render"]
    assert (ROOT / "docs" / "configuration.md").read_text() == render(), "run docs/gen_config_reference.py"


def test_readme_quick_start_has_exactly_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [line.strip() for line in quick.split("```")[1].splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_result_column_is_documented():
    schema_doc = (ROOT / "docs" / "schema.md").read_text()
    for field in SCHEMA:
        assert f"`{field.name}`" in schema_doc, field.name


def test_every_file_of_an_output_folder_and_its_metadata_is_documented(tmp_path):
    """A real run's folder: each name it holds is in docs/schema.md's list, and the Parquet metadata the
    README and docs/schema.md name is exactly what a unit file carries (issue 22 item 3)."""
    from rscert.cli import main

    from .jobutil import certify_args
    from .shardutil import write_shards

    write_shards(tmp_path / "data", shards=1, per_shard=6)
    out = tmp_path / "out"
    assert main(certify_args(str(tmp_path / "data" / "data-000000.tar"), out, n=50, n0=20)) == 0
    schema_doc = (ROOT / "docs" / "schema.md").read_text()
    folder_doc = schema_doc.split("## The output folder", 1)[1].split("\n## ", 1)[0]
    names = {p.name + ("/" if p.is_dir() else "") for p in out.iterdir()}
    assert {"units/", "_rscert_manifest.json", "_rscert_selection.json", "_rscert_executions/"} <= names
    for name in names:
        assert f"`{name}" in folder_doc, f"{name} is not in docs/schema.md's output folder list"
    unit = next((out / "units").glob("*.parquet"))
    keys = {k.decode() for k in pq.read_metadata(unit).metadata if k.startswith(b"rscert.")}
    assert keys == {"rscert.fingerprint", "rscert.run_id", "rscert.unit_id"}
    readme = (ROOT / "README.md").read_text()
    for key in keys:
        assert f"`{key}`" in readme and f"`{key}`" in folder_doc
    assert "same facts are in every file's Parquet metadata" not in readme


@pytest.mark.parametrize("path", sorted((ROOT / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_job_configs_validate(path):
    values = yaml.safe_load(path.read_text())
    model = TrainConfig if path.name.startswith("train") else CertifyConfig
    model(**values)
