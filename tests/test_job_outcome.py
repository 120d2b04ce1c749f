"""How a job ends: the exit status and the closing lines say what happened (issue 22 items 2 and 12):
a job in which no input could be certified exits non-zero and says why; progress lines come after the
unit lines they count, and the last one once."""

from __future__ import annotations

import re
from pathlib import Path

from rscert.cli import main

from .jobutil import certify_args
from .shardutil import write_shards


def _shards(tmp_path: Path, classes: int) -> str:
    write_shards(tmp_path / "data", shards=2, per_shard=4, classes=classes, seed=1)
    return str(tmp_path / "data" / "data-{000000..000001}.tar")


def test_a_job_that_certified_nothing_exits_non_zero_and_says_why(tmp_path, capsys):
    # labels of 1,000 classes for a 4-class model: every row fails with invalid_label
    data = _shards(tmp_path, classes=1000)
    code = main(certify_args(data, tmp_path / "out", **{"num-classes": 4, "n": 100, "n0": 20}))
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert code == 1, text
    assert "nothing was certified" in text
    assert re.search(r"invalid_label: 8 rows?", text), text
    assert "does not fit 4 classes" in text  # an example of the rows' own message
    # a rerun certifies nothing new and says so again
    assert main(certify_args(data, tmp_path / "out", **{"num-classes": 4, "n": 100, "n0": 20})) == 1


def test_a_job_with_good_inputs_exits_zero(tmp_path, capsys):
    data = _shards(tmp_path, classes=4)
    assert main(certify_args(data, tmp_path / "out", **{"n": 100, "n0": 20})) == 0
    assert "nothing was certified" not in capsys.readouterr().out


def test_progress_lines_follow_the_units_they_count_and_the_last_comes_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RSCERT_PROGRESS_INTERVAL", "0")  # a progress line after every unit
    data = _shards(tmp_path, classes=4)
    assert main(certify_args(data, tmp_path / "out", **{"n": 100, "n0": 20})) == 0
    lines = capsys.readouterr().err.splitlines()
    progress = [i for i, line in enumerate(lines) if line.startswith("certifying: ")]
    units = [i for i, line in enumerate(lines) if line.startswith("unit ")]
    assert len(units) == 2
    counts = [int(re.match(r"certifying: (\d+)/\d+", lines[i]).group(1)) for i in progress]  # totals grow
    assert counts == [4, 8], lines  # one line per unit, the final one not repeated
    assert units[0] < progress[0] < units[1] < progress[1]  # each after the unit line it counts


def test_an_n_too_small_to_certify_is_warned_with_the_smallest_useful_n(tmp_path, capsys):
    data = _shards(tmp_path, classes=4)
    main(certify_args(data, tmp_path / "a", **{"n": 9, "n0": 20, "alpha": 0.001}))
    err = capsys.readouterr().err
    assert "--n 9 cannot certify any input at alpha 0.001" in err and "the smallest n that can is 10" in err
    main(certify_args(data, tmp_path / "b", **{"n": 10, "n0": 20, "alpha": 0.001}))
    assert "cannot certify" not in capsys.readouterr().err


def test_a_factory_model_with_normalize_auto_is_warned(tmp_path, capsys):
    data = _shards(tmp_path, classes=4)
    assert main(certify_args(data, tmp_path / "a", **{"n": 100, "n0": 20})) == 0
    assert "--normalize auto gives no normalisation for the factory 'tests.zoo:tiny_cnn'" in capsys.readouterr().err
    assert main(certify_args(data, tmp_path / "b", **{"n": 100, "n0": 20, "normalize": "none"})) == 0
    assert "normalisation" not in capsys.readouterr().err


def test_predict_ignores_certify_only_settings_alike_on_the_command_line_and_in_a_file(tmp_path, capsys):
    data = _shards(tmp_path, classes=4)
    args = ["predict", "--data", data, "--model", "tests.zoo:tiny_cnn", "--random-init", "--sigma", "0.5",
            "--n", "30", "--unit-size", "4"]
    assert main([*args, "--out", str(tmp_path / "a"), "--n0", "100"]) == 0
    assert "rscert predict ignores n0" in capsys.readouterr().err
    cfg = tmp_path / "certify.yaml"
    cfg.write_text("n0: 100\nsampling: sequential\nradii: [0.5]\n")
    assert main([*args, "--out", str(tmp_path / "b"), "--config", str(cfg)]) == 0
    assert "rscert predict ignores n0, sampling, radii" in capsys.readouterr().err
