"""What recording and checking shards' content identity costs (rscert.data.shard_identity).

Writes local tar shards of incompressible members (as large as ImageNet JPEG shards per byte), then
times, on a warm page cache, in one process:

* the key scan planning did before (headers only; ``shard_keys``) and the first indexing of a folder
  now (keys and the sha256 of each file; ``shard_identity.scan``);
* a resume's check of unchanged shards (``verify``: metadata only) and of shards whose modification
  time changed (a copy, a restore: ``verify`` re-hashes them);
* a ``pipe:`` shard (``cat``): the streamed key scan without and with the hash (every resume re-reads it).

    python bench/shard_identity_bench.py [--shards 4] [--mb 64] [--folder DIR]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rscert.data.shard_identity import Hasher, scan, verify  # noqa: E402
from rscert.data.shards import shard_keys, walk  # noqa: E402


def write_shards(folder: Path, shards: int, megabytes: int, member_kb: int = 110) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(shards):
        path = folder / f"bench-{s:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(megabytes * 1024 // member_kb):
                for ext, data in (("jpg", os.urandom(member_kb * 1024)), ("cls", b"7")):
                    info = tarfile.TarInfo(f"k{s:02d}_{i:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, fileobj=io.BytesIO(data))
        paths.append(str(path))
    return paths


def timed(fn) -> float:
    fn()  # warm the page cache
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--mb", type=int, default=64, help="size of each shard in MiB")
    parser.add_argument("--folder", default=None)
    args = parser.parse_args()
    folder = Path(args.folder or tempfile.mkdtemp(prefix="rscert-identity-"))
    paths = write_shards(folder, args.shards, args.mb)
    total = sum(os.path.getsize(p) for p in paths) / 2**20
    records = {p: scan(p)[1] for p in paths}
    keys = {p: shard_keys(p) for p in paths}

    t_keys = timed(lambda: [shard_keys(p) for p in paths])
    t_first = timed(lambda: [scan(p) for p in paths])
    t_same = timed(lambda: [verify(p, records[p], keys=keys[p]) for p in paths])

    def touched() -> None:
        for p in paths:
            os.utime(p, ns=(time.time_ns(), time.time_ns()))
            assert verify(p, records[p], keys=keys[p])[0] is None

    t_touched = timed(touched)
    pipe = f"pipe:cat {paths[0]}"

    def streamed(digest: Hasher | None) -> None:
        for _ in walk(pipe, wanted=set(), digest=digest):
            pass

    t_pipe = timed(lambda: streamed(None))
    t_pipe_hash = timed(lambda: streamed(Hasher()))
    shard_mb = os.path.getsize(paths[0]) / 2**20
    print(f"{args.shards} local shards, {total:.0f} MiB in all, warm page cache")
    print(f"key scan (headers only, before):         {t_keys:8.3f} s")
    print(f"first indexing (keys + sha256, now):     {t_first:8.3f} s  ({total / t_first:.0f} MiB/s; "
          f"{t_first / t_keys:.1f}x the key scan)")
    per_shard = 1e6 * t_same / len(paths)
    print(f"resume check, shards unchanged:          {t_same:8.4f} s  (metadata only: {per_shard:.0f} µs per shard)")
    print(f"resume check, modification time changed: {t_touched:8.3f} s  (re-hash: {total / t_touched:.0f} MiB/s)")
    print(f"pipe: cat, streamed key scan:            {t_pipe:8.3f} s  ({shard_mb:.0f} MiB)")
    print(f"pipe: cat, streamed key scan + sha256:   {t_pipe_hash:8.3f} s  ({t_pipe_hash / t_pipe:.2f}x)")


if __name__ == "__main__":
    main()
