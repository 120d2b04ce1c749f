"""The package's architecture holds (issue 17): subpackages in layers, imports only downward, no circle,
modules under 400 lines, the torch-free and Ray-free rooms stay so, every subpackage installed, and a
wheel built from the repository runs ``rscert certify`` outside it."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from rscert.cli import build_parser

from .jobutil import ROOT, certify_args
from .shardutil import write_shards

PKG = ROOT / "pipeline"
LAYERS = [
    {"rscert", "rscert.errors", "rscert.constants"},
    {"rscert.stats"},
    {"rscert.store"},
    {"rscert.config"},
    {"rscert.analysis"},
    {"rscert.models"},
    {"rscert.data"},
    {"rscert.sampling"},
    {"rscert.run"},
    {"rscert.train"},
    {"rscert.demo"},
    {"rscert.cli"},
]
"""Lowest first: a module may import from its own room (subpackage) or an earlier row, never a later one."""
TORCH_FREE = ["stats", "store", "config", "analysis"]
RAY_MODULES = {"rscert.run.ray_runner", "rscert.run.ray_facts", "rscert.train"}
"""Ray is imported only by the Ray executor and by train (it starts Ray Train)."""


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(PKG).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["rscert", *parts])] = path
    return out


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, lazy ones inside functions included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import; write `from rscert.<room>.<module>`"
            # `from rscert.sampling import noise` imports the module rscert.sampling.noise
            subs = [f"{node.module}.{alias.name}" for alias in node.names]
            named = [m for m in subs if (PKG / Path(*m.split(".")[1:])).with_suffix(".py").exists()]
            found += [(m, node.lineno) for m in named] if len(named) == len(subs) else [(node.module, node.lineno)]
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for target, _ in _imports(path):
            if target in modules and target != name:
                graph[name].add(target)
    return graph


def _room(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def _layer(module: str) -> int:
    room = _room(module)
    return next(i for i, rooms in enumerate(LAYERS) if room in rooms)


def test_every_module_is_in_a_layer():
    for module in _modules():
        _layer(module)  # raises StopIteration for a room the layers do not name


def test_imports_go_only_downward():
    upward = []
    for module, targets in _graph().items():
        for target in targets:
            if target == "rscert" or _room(target) == _room(module):
                continue
            if _layer(target) >= _layer(module):
                upward.append(f"{module} -> {target}")
    assert not upward


def test_no_import_circle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join([*stack[stack.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_graph_sees_the_imports():
    """The checks above are only as good as the graph: it must hold the edges we know exist."""
    graph = _graph()
    assert "rscert.stats.smoothing" in graph["rscert.sampling.certify"]
    assert "rscert.run.worker" in graph["rscert.run.local"]  # a lazy import inside a function
    assert "rscert.sampling.noise_cpu" in graph["rscert.sampling.noise"]  # `from rscert.sampling import noise_cpu`


def test_inside_the_package_nothing_imports_a_package_init():
    """Modules import from modules; a package's __init__ is only its public face (else circles hide there)."""
    modules = _modules()
    packages = {m for m, p in modules.items() if p.name == "__init__.py"} - {"rscert"}
    bad = [f"{m} -> {t}" for m, targets in _graph().items() for t in targets if t in packages and m != t]
    assert not bad


def test_modules_stay_under_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long


def test_ray_only_in_the_ray_executor_and_train():
    users = {m for m, p in _modules().items() if any(t == "ray" or t.startswith("ray.") for t, _ in _imports(p))}
    assert users == RAY_MODULES


def test_pyproject_installs_every_subpackage():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"rscert": "pipeline"}
    folders = {".".join(["rscert", *p.parent.relative_to(PKG).parts]) for p in PKG.rglob("__init__.py")}
    assert sorted(config["packages"]) == sorted(folders)
    assert all((p.parent / "__init__.py").exists() for p in PKG.rglob("*.py"))  # no module outside a package


def test_readme_layer_table_names_every_module():
    readme = (ROOT / "README.md").read_text()
    rows = {line.split("|")[1].strip(" `/"): line for line in readme.splitlines() if line.startswith("  | ")}
    for module in _modules():
        parts = module.split(".")
        if len(parts) == 3:
            assert f"`{parts[2]}`" in rows.get(parts[1], ""), f"README's layer table lacks {module}"


@pytest.mark.parametrize("room", TORCH_FREE)
def test_torch_free_rooms_import_neither_torch_nor_ray(room):
    names = sorted(m for m in _modules() if m.split(".")[1:2] == [room])
    code = ("import sys\n" + "".join(f"import {m}\n" for m in names)
            + "print(sorted(m for m in ('torch', 'ray', 'torchvision') if m in sys.modules))")
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": path, "MPLBACKEND": "Agg"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", (room, done.stdout)


def test_the_ray_executors_driver_imports_no_torch():
    """The Ray driver's modules (the CLI, prepare, planning, the Ray executor, the report) leave torch to the
    Ray task and the actors: importing torch alone is about 600 MB of the driver's 1 GB (issue 21)."""
    code = ("import sys\nimport rscert.cli, rscert.run, rscert.run.prepare, rscert.run.plan_feed, rscert.run.report\n"
            "import rscert.run.ray_runner, rscert.run.ray_facts, rscert.run.local, rscert.data.plan\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'webdataset') if m in sys.modules))")
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def _parsers(parser):
    yield parser
    for action in parser._actions:
        for sub in getattr(action, "choices", None).values() if hasattr(action, "_name_parser_map") else ():
            yield from _parsers(sub)


def test_no_command_accepts_abbreviations(capsys):
    parsers = list(_parsers(build_parser()))
    assert len(parsers) > 5 and all(not p.allow_abbrev for p in parsers)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["certify", "--data", "x.tar", "--out", "o", "--sigma", "0.5", "--prec", "fp16"])
    assert "unrecognized arguments: --prec fp16" in capsys.readouterr().err  # not --precision
    with_norm = build_parser().parse_args(["certify", "--data", "x.tar", "--out", "o", "--sigma", "0.5",
                                           "--norm", "l1"])
    assert with_norm.norm == "l1" and with_norm.normalize is None  # --norm is its own setting
    ok = build_parser().parse_args(["certify", "--data", "x.tar", "--out", "o", "--sigma", "0.5",
                                    "--normalize", "none"])
    assert ok.normalize == "none"


@pytest.mark.slow
def test_a_wheel_from_a_clean_copy_certifies_outside_the_repository(tmp_path):
    """Build a wheel from the repository's files (as a fresh clone has them), install it with
    ``--target``, and run ``python -m rscert.cli certify`` from a folder outside the repository."""
    src = tmp_path / "src"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split("\n")
    for name in filter(None, listed):
        if (ROOT / name).is_file() and not name.startswith(("tests/data/", "notebooks/")):
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    wheels, target, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("rscert-*.whl")
    subprocess.run([*pip, "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True,
                   capture_output=True, timeout=300)
    work.mkdir()
    write_shards(work / "shards", shards=1, per_shard=3, size=8, classes=10)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(target),
           "OMP_NUM_THREADS": "1"}
    where = subprocess.run([sys.executable, "-c", "import rscert, rscert.analysis; print(rscert.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(target)
    args = certify_args(str(work / "shards" / "data-000000.tar"), work / "out", model="cifar_resnet20",
                        **{"num-classes": 10, "n0": 10, "n": 50, "batch-size": 64})
    done = subprocess.run([sys.executable, "-m", "rscert.cli", *args], cwd=work, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "3 selected, 3 certified" in done.stdout
    assert list((work / "out" / "units").glob("*.parquet"))


@pytest.mark.parametrize("sampling", ["fixed", "sequential"])
def test_the_run_columns_have_one_home_and_are_the_analysis_keys(sampling):
    """The selection record, the worker's rows and the analysis's grouping all name a run by
    CertifyConfig.run_columns / identity_columns, which cover exactly store.results.KEY_COLUMNS."""
    from rscert.config.certify import CertifyConfig
    from rscert.store.results import KEY_COLUMNS, SCHEMA

    config = CertifyConfig(data="x.tar", out="o", sigma=0.5, model="m", sampling=sampling)
    run = {"run_id": "r", "dataset": "d", "split": "test", "model": "m", "checkpoint_sha256": None, "num_classes": 3}
    columns = config.run_columns(run)
    assert sorted(columns) == sorted(KEY_COLUMNS)
    assert set(config.identity_columns(run)) < set(KEY_COLUMNS) <= set(SCHEMA.names)
    assert columns["n"] == (None if sampling == "sequential" else config.n) and columns["n_max"] == config.n
