"""The CPU kernel of the noise generator: the same Philox words and the same float32 normals as the
torch rounds, whatever the tiling, the threads, or a read-only install."""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from rscert.sampling import noise, noise_cpu
from rscert.sampling.noise import normal, philox4x32, stream
from tests.test_noise import KAT, reference_philox

ROOT = Path(__file__).resolve().parents[1]


def kernel_words(block0, draw0, rows, cols, c2, c3, k0, k1):
    words = [np.zeros((rows, cols), dtype=np.int64) for _ in range(4)]
    noise_cpu.philox_tile(words, block0, draw0, c2, c3, noise_cpu.round_keys(k0, k1))
    return words


@pytest.mark.parametrize(("counter", "key", "expected"), KAT)
def test_kernel_matches_the_known_answers(counter, key, expected):
    c0, c1, c2, c3 = counter
    words = kernel_words(c0, c1, 1, 1, c2, c3, *key)
    assert tuple(int(w[0, 0]) for w in words) == expected


def test_kernel_words_equal_the_torch_rounds_and_the_reference():
    """A tile of 3 draws x 300 blocks, counters and keys near 2^32 where a signed product would overflow."""
    rng = np.random.default_rng(3)
    for block0, draw0 in [(0, 0), (2**32 - 300, 2**32 - 3), (12345, 777)]:
        k0, k1, c2, c3 = (int(v) for v in rng.integers(2**31, 2**32, size=4))
        got = kernel_words(block0, draw0, 3, 300, c2, c3, k0, k1)
        c0 = torch.arange(block0, block0 + 300, dtype=torch.int64).unsqueeze(0)
        c1 = torch.arange(draw0, draw0 + 3, dtype=torch.int64).unsqueeze(1)
        want = philox4x32(c0, c1, c2, c3, k0, k1)
        for g, w in zip(got, want, strict=True):
            assert np.array_equal(g, w.expand(3, 300).numpy())
        for i, j in [(0, 0), (2, 299), (1, 150)]:
            assert tuple(int(g[i, j]) for g in got) == reference_philox((block0 + j, draw0 + i, c2, c3), (k0, k1))


def test_kernel_uniforms_equal_the_torch_uniforms_bit_for_bit():
    """u1 and theta of the compiled kernel against rscert.sampling.noise._uniforms_tile on the torch words."""
    rng = np.random.default_rng(4)
    for block0, draw0 in [(0, 0), (2**32 - 3000, 2**32 - 5), (98765, 4321)]:
        k0, k1, c2, c3 = (int(v) for v in rng.integers(0, 2**32, size=4))
        shape = (5, 3000)
        u1, theta = np.empty(shape, np.float32), np.empty(shape, np.float32)
        noise_cpu.uniforms_tile(u1, theta, block0, draw0, c2, c3, noise_cpu.round_keys(k0, k1))
        ws = noise._Workspace(shape, torch.device("cpu"))
        words = [torch.from_numpy(w) for w in kernel_words(block0, draw0, *shape, c2, c3, k0, k1)]
        noise._uniforms_tile(ws, words)
        assert np.array_equal(u1.view(np.int32), ws.floats[0].numpy().view(np.int32))
        assert np.array_equal(theta.view(np.int32), ws.floats[1].numpy().view(np.int32))
        assert u1.min() > 0 and u1.max() <= 1 and theta.min() >= 0 and theta.max() < 2 * np.pi


def bits(t):
    return t.contiguous().view(torch.int32)


def both_paths(monkeypatch, key, start, count, shape):
    monkeypatch.setattr(noise, "_CPU_KERNEL_MIN", 0)
    fast = normal(key, start, count, shape)
    monkeypatch.setattr(noise, "_CPU_KERNEL_MIN", 1 << 62)
    slow = normal(key, start, count, shape)
    return fast, slow


@pytest.mark.parametrize(("shape", "count", "start"), [
    ((7,), 5, 0), ((2, 5, 3), 33, 40), ((3, 17, 17), 9, 2**32 - 9), ((3, 32, 32), 40, 1000),
    ((1, 181, 181), 2, 7), ((3, 224, 224), 3, 123456),  # odd counts; several tiles per draw
])
def test_the_fast_path_gives_the_torch_path_bit_for_bit(monkeypatch, shape, count, start):
    for seed, ident in [(0, "0"), (7, "41"), (2**40, "x")]:
        fast, slow = both_paths(monkeypatch, stream(seed, ident, "estimation"), start, count, shape)
        assert torch.equal(bits(fast), bits(slow))


def test_the_sampler_uses_the_kernel_on_large_calls(monkeypatch):
    calls = []
    original = noise_cpu.uniforms_tile
    monkeypatch.setattr(noise_cpu, "uniforms_tile", lambda *a: calls.append(1) or original(*a))
    normal(stream(0, "big", "selection"), 0, 8, (3, 128, 128))  # 393216 values >= _CPU_KERNEL_MIN
    assert calls
    calls.clear()
    normal(stream(0, "small", "selection"), 0, 8, (3, 8, 8))
    assert not calls


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads_change_neither_the_noise_nor_the_setting(monkeypatch, threads):
    key, shape = stream(1, "t", "prediction"), (3, 64, 65)
    monkeypatch.setattr(noise, "_CPU_KERNEL_MIN", 0)
    before = torch.get_num_threads()
    want = normal(key, 3, 21, shape)
    try:
        torch.set_num_threads(threads)
        got = normal(key, 3, 21, shape)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert torch.equal(bits(got), bits(want))


SCRIPT = """
import hashlib
from rscert.sampling import noise
noise._CPU_KERNEL_MIN = 0
z = noise.normal(noise.stream(3, "ro", "estimation"), 5, 4, (3, 9, 9))
print(noise.__file__, hashlib.sha256(z.numpy().tobytes()).hexdigest())
"""


def test_a_read_only_install_works_and_caches_elsewhere():
    """The package in a folder its user cannot write: numba caches in the user's cache folder."""
    with tempfile.TemporaryDirectory() as tmp:  # not under pytest's private (0700) folder
        Path(tmp).chmod(0o755)
        check_read_only_install(Path(tmp) / "ro", Path(tmp) / "home")


def test_a_read_only_install_with_a_read_only_home_works_without_a_cache():
    """Nowhere to cache (read-only package and HOME, issue 22 item 6): the kernels compile in-process."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp).chmod(0o755)
        check_read_only_install(Path(tmp) / "ro", Path(tmp) / "home", home_writable=False)


def test_the_read_only_check_works_from_a_python_in_a_private_folder(tmp_path):
    """The check runs whatever folder the checkout and its venv are in: here a Python whose folder only
    its owner may enter (as /root/... or a 0700 temporary folder), as root or not (issue 22 item 13)."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(private / "venv")], check=True, timeout=120)
    python = private / "venv" / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                          capture_output=True, text=True).stdout.strip()
    Path(site, "parent-venv.pth").write_text("\n".join(p for p in sys.path if p.endswith("site-packages")) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp).chmod(0o755)
        check_read_only_install(Path(tmp) / "ro", Path(tmp) / "home", python=str(python))


def unprivileged(cmd: list[str]) -> list[str]:
    """``cmd`` without the power to write where its user may not: as root, the same user (so the checkout
    stays reachable wherever it lives) with every capability dropped (CAP_DAC_OVERRIDE lets root write
    into read-only folders); otherwise unchanged."""
    if os.geteuid() == 0:
        return ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--", *cmd]
    return cmd


def check_read_only_install(install, home, home_writable=True, python=sys.executable):
    shutil.copytree(ROOT / "pipeline", install / "rscert", ignore=shutil.ignore_patterns("__pycache__"))
    home.mkdir()
    read_only = [install, *install.rglob("*")] + ([] if home_writable else [home])
    for path in read_only:
        path.chmod(0o555 if path.is_dir() else 0o444)
    cmd = unprivileged([python, "-c", SCRIPT])
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env.update(HOME=str(home), PYTHONPATH=str(install), XDG_CACHE_HOME=str(home / ".cache"))
    try:
        for _ in range(2):  # compile, then load from the cache (where there is one)
            run = subprocess.run(cmd, env=env, cwd=install, capture_output=True, text=True, timeout=300)
            assert run.returncode == 0, run.stderr[-2000:]
            path, digest = run.stdout.split()
            assert path.startswith(str(install))
    finally:
        for path in read_only:
            path.chmod(0o755)  # let the folder be removed
    z = normal(stream(3, "ro", "estimation"), 5, 4, (3, 9, 9))
    assert digest == hashlib.sha256(z.numpy().tobytes()).hexdigest()
    assert not list(install.rglob("*.nbi"))
    assert bool(list((home / ".cache").rglob("noise_cpu*.nbi"))) == home_writable
