"""The command line: fast, whole help; messages that say what is wrong and what to do."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from rscert.cli import main
from rscert.run.progress import Progress

from .jobutil import ROOT, certify_args, env, run, table
from .shardutil import write_shards


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env(),
                          timeout=120)


def test_parsing_and_help_import_neither_torch_nor_ray():
    code = (
        "import sys, contextlib, io\n"
        "from rscert.cli import build_parser\n"
        "parser = build_parser()\n"
        "parser.parse_args(['analyze', 'x'])\n"
        "for argv in (['--help'], ['certify', '--help'], ['predict', '--help'], ['train', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        parser.parse_args(argv)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'ray'))\n"
        "assert not heavy, heavy\n"
        "print('clean')\n"
    )
    result = _python(code)
    assert result.returncode == 0 and "clean" in result.stdout, result.stderr


def test_help_lists_commands_defaults_and_required_settings():
    top = run(["--help"])
    assert top.returncode == 0
    for command in ("certify", "predict", "analyze", "import-logs", "train", "demo"):
        assert command in top.stdout
    cert = run(["certify", "--help"])
    assert cert.returncode == 0, cert.stderr
    text = " ".join(cert.stdout.split())  # argparse wraps lines
    assert "%(" not in text and "i % skip == 0" in text
    assert "estimation samples per input (default: 100,000)" in text
    assert "(default: 0.001)" in text and "selection samples per input (default: 100)" in text
    assert "(default: 400)" in text and "(default: 32)" in text
    assert ("noise standard deviation per coordinate in [0, 1] pixel units, for every --noise family "
            "(required; here or in --config)") in text
    assert "--data DATA [DATA ...] shards:" in text and "--out OUT output folder" in text
    assert "default: RAY_ADDRESS, else start a local Ray" in text
    assert "the published scripts' --max" in text  # --end
    pred = run(["predict", "--help"])
    ptext = " ".join(pred.stdout.split())
    assert pred.returncode == 0 and "--n0" not in ptext and "--sampling" not in ptext
    assert "noise samples per input (PREDICT's N) (default: 100,000)" in ptext
    assert "p <= alpha (default: 0.001)" in ptext


def test_missing_shard_says_what_is_missing_and_what_to_do(tmp_path, capsys):
    write_shards(tmp_path / "data", shards=2, per_shard=4)
    spec = f"{tmp_path}/data/data-{{000000..000002}}.tar"  # 000002 does not exist
    out = tmp_path / "out"
    assert main(certify_args(spec, out)) == 1
    text = capsys.readouterr().out
    missing = f"{tmp_path}/data/data-000002.tar"
    line = next(ln for ln in text.splitlines() if missing in ln)
    assert line.strip() == f"shard {missing}: no such file; restore it or fix --data"
    assert line.count(missing) == 1
    assert "the 2 committed units are kept" in text
    assert "rerun the same command: only the units that are not committed run" in text
    assert "retry them" not in text
    assert table(out).height == 8


def test_end_is_the_published_max_and_max_counts_inputs(tmp_path):
    """Published scripts: `if i % skip: continue; if i == max: break` -> --end; rscert's --max counts."""
    write_shards(tmp_path / "data", shards=2, per_shard=10)
    spec = f"{tmp_path}/data/data-{{000000..000001}}.tar"
    published = [i for i in range(20) if i % 3 == 0 and i < 9]  # published --skip 3 --max 9
    assert main(certify_args(spec, tmp_path / "end", skip=3, end=9, n0=10, n=20)) == 0
    assert table(tmp_path / "end")["index"].to_list() == published == [0, 3, 6]
    assert main(certify_args(spec, tmp_path / "max", skip=3, max=2, n0=10, n=20)) == 0
    assert table(tmp_path / "max")["index"].to_list() == [0, 3]
    readme = (ROOT / "README.md").read_text()
    assert "`--end N` is the published `--max N`" in readme


def test_ray_actor_leaves_the_unit_line_to_the_driver(tmp_path, capsys):
    """The actor's method, run in this process: it commits the unit and prints nothing itself."""
    from rscert.config.certify import load_config
    from rscert.run.prepare import prepare
    from rscert.run.ray_runner import CertifierActor

    write_shards(tmp_path / "data", shards=1, per_shard=4)
    args = certify_args(str(tmp_path / "data" / "data-000000.tar"), tmp_path / "out", n0=10, n=20,
                        **{"random-init": None})
    values = dict(zip([a[2:].replace("-", "_") for a in args[1::2]], args[2::2], strict=True))
    job = prepare(load_config(None, {**values, "random_init": True}), log=lambda _: None)
    actor = CertifierActor(job.config.model_dump(), job.run)
    capsys.readouterr()
    summary = actor.run(job.pending[0].to_json())
    assert summary["rows"] == 4 and (tmp_path / "out" / "units" / f"{summary['unit_id']}.parquet").exists()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


@pytest.mark.parametrize("interval", [0.0, 3600.0])
def test_progress_off_a_terminal_prints_whole_lines(interval):
    sink = io.StringIO()
    with Progress(10, "certifying", file=sink, interval=interval) as bar:
        for _ in range(5):
            bar.set_postfix(units="1/5", samples_per_s="100")
            bar.update(2)
            bar.write("unit u: 2 rows")
    text = sink.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = [ln for ln in text.splitlines() if ln.startswith("certifying:")]
    assert lines[-1].startswith("certifying: 10/10 inputs (100%), units 1/5, samples per s 100, elapsed 0:00:00")
    assert len(lines) == (5 if interval == 0.0 else 1)  # every update (the last not repeated), or the closing line
    assert text.count("unit u: 2 rows") == 5


def test_closing_summary_matches_the_rows(tmp_path, capsys):
    """The certify job's closing lines (pyarrow + numpy) agree with Polars over the written rows."""
    import polars as pl

    write_shards(tmp_path / "data", shards=1, per_shard=10)
    out = tmp_path / "out"
    assert main(certify_args(str(tmp_path / "data" / "data-000000.tar"), out, sigma=0.25, n=200)) == 0
    text = capsys.readouterr().out
    df = table(out)
    abstain = (df["prediction"] == -1).sum() / df.height
    assert f"inputs: 10 selected, 10 certified, 0 failed (0 failed rows, 0 in units not committed); " \
           f"abstain rate {abstain:.3f}" in text
    cells = [f"r={r:g}: {df.filter(pl.col('correct') & (pl.col('radius') >= r)).height / 10:.3f}"
             for r in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert "certified accuracy (of all 10 selected inputs)  " + "  ".join(cells) in text
