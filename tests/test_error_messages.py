"""Failures outside rscert's control end as one line that names the setting to fix, not a traceback
(issue 22 items 5 and 6): an object store that cannot be reached, a demo without scikit-learn."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .jobutil import ROOT, certify_args, env, run


def _no_traceback(result: subprocess.CompletedProcess) -> str:
    text = result.stdout + result.stderr
    assert "Traceback" not in text, text[-3000:]
    return text


@pytest.mark.parametrize("endpoint", [None, "http://127.0.0.1:9"], ids=["aws-default", "closed-port"])
def test_an_unreachable_object_store_is_one_line_naming_the_endpoint_setting(tmp_path, monkeypatch, endpoint):
    """No AWS_ENDPOINT_URL (this machine reaches no AWS) or one where nothing listens."""
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    if endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    else:
        monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    result = run(certify_args("s3://no-bucket/data-{000000..000001}.tar", tmp_path / "out"), timeout=300)
    text = _no_traceback(result)
    assert result.returncode == 2, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    assert "AWS_ENDPOINT_URL" in errors[0] and "s3://no-bucket/data-000000.tar" in errors[0]
    assert "storage-options" in errors[0]


def test_the_demo_without_scikit_learn_says_what_to_install(tmp_path):
    # Python's documented way to make an import fail: a None entry in sys.modules
    script = ("import sys; sys.modules['sklearn'] = None\n"
              "from rscert.cli import main\n"
              f"sys.exit(main(['demo', '--out', {str(tmp_path / 'demo')!r}]))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env(),
                            timeout=300)
    text = _no_traceback(result)
    assert result.returncode == 2
    assert "scikit-learn" in text and "rscert[demo]" in text
    assert not (tmp_path / "demo").exists() or not any((tmp_path / "demo").iterdir())
