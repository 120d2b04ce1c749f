"""The docs stay true: generated reference current, README's two commands, schema documented,
example job configs valid."""

import runpy
from pathlib import Path

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


@pytest.mark.parametrize("path", sorted((ROOT / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_job_configs_validate(path):
    values = yaml.safe_load(path.read_text())
    model = TrainConfig if path.name.startswith("train") else CertifyConfig
    model(**values)
