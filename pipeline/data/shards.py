"""WebDataset shards: expand shard specs, open them, and walk their samples in order.

A sample is a run of consecutive tar members sharing a key (WebDataset's ``__key__``: the member
path up to the first dot of its file name). Walking a shard never decodes anything, and members of
samples nobody asked for are skipped without reading their data where the source can seek.

Sources: local paths, ``file://``, any fsspec URL (``s3://``, ``gs://``, ``http(s)://``, ...) and
``pipe:COMMAND`` (the command writes the tar to stdout), as WebDataset users write them. A pipe
command runs under ``sh -c`` with its standard input at end-of-file (never the driver's), and a
non-zero exit fails the shard with the command's last stderr lines.
"""

from __future__ import annotations

import glob
import io
import os
import re
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import braceexpand

from rscert.store.storage import StorageError, StorageUnreachableError, filesystem, is_remote, reaching, unstrip

_TAR_BLOCK = 512
_WILDCARDS = set("*?[")


def expand_urls(spec: str) -> list[str]:
    """WebDataset's URL expansion (that of ``webdataset.shardlists.expand_urls``, which cannot be imported
    without torch, and the driver does not import torch): ``::`` separates specs; ``${NAME}`` is the
    environment variable ``WDS_NAME`` (substituted until nothing changes, at most 10 rounds); then
    brace ranges (``shard-{000..063}.tar``, with :mod:`braceexpand`)."""
    def lookup(match: re.Match) -> str:
        name = "WDS_" + match.group(1)
        if name not in os.environ:
            raise ShardError(f"data: {spec!r} names ${{{match.group(1)}}} but the environment variable {name} "
                             "is not set")
        return os.environ[name]

    out: list[str] = []
    for url in spec.split("::"):
        for _ in range(10):
            url, last = re.sub(r"\$\{(\w+)\}", lookup, url), url
            if url == last:
                break
        out.extend(braceexpand.braceexpand(url))
    return out


def base_plus_ext(name: str) -> tuple[str | None, str | None]:
    """A tar member's sample key and extensions, WebDataset's rule (``webdataset.tariterators.base_plus_ext``):
    the name up to the first dot of its last path part, and the rest; ``(None, None)`` without a dot."""
    match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", name)
    return (match.group(1), match.group(2)) if match else (None, None)


class ShardError(RuntimeError):
    """A shard that is missing, unreadable, truncated or changed; fails the units that read it."""


def expand_shards(spec: str | Iterable[str], storage_options: dict[str, Any] | None = None) -> list[str]:
    """Shard URLs from a spec: one spec (a string) or several (a list), each expanded as WebDataset
    expands URLs (``::`` separates specs inside one string, brace ranges ``shard-{000..063}.tar``);
    then, for paths and fsspec URLs, glob patterns. A ``pipe:`` spec is one command, spaces and
    quotes included (``pipe:aws s3 cp s3://b/shard-{000..009}.tar -`` is ten commands).

    Explicit names are kept even if missing (that fails their units, not the plan); a glob that
    matches nothing contributes nothing. Order is kept, duplicates dropped.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in items:
        for url in expand_urls(item):
            if url.startswith("pipe:"):
                out.append(url)
                continue
            if is_remote(url):
                try:  # the scheme's package must be there, whether or not the URL has wildcards
                    fs, path = filesystem(url, storage_options, "data")
                except StorageError as exc:
                    raise ShardError(str(exc)) from None
            if not (_WILDCARDS & set(url)):
                out.append(url)
            elif is_remote(url):
                with reaching(url, "data"):
                    out.extend(unstrip(fs, p) for p in sorted(fs.glob(path)))
            else:
                out.extend(sorted(glob.glob(url.removeprefix("file://"))))
    return list(dict.fromkeys(out))


def shard_name(url: str) -> str:
    """A short human name for a shard (its file name, or the last word of a pipe command)."""
    if url.startswith("pipe:"):
        words = [w for w in url.split() if w not in ("-", "|")] or [url]
        url = words[-1].strip("'\"")
    return os.path.basename(url.rstrip("/")) or url


class _Counting:
    """A read-only stream wrapper that counts bytes, so a stream's length is known after a walk (and
    feeds them to ``digest``, if given, so a streamed shard is hashed as it is read)."""

    def __init__(self, raw: IO[bytes], digest: Any = None) -> None:
        self.raw = raw
        self.count = 0
        self.digest = digest

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        if self.digest is not None:
            self.digest.update(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


@dataclass
class _Opened:
    fileobj: IO[bytes]
    size: int | None  # known for local files (seekable path)
    closer: object
    details: dict[str, Any]  # what was opened: local fstat, the object store's info, or nothing for a pipe


class _PipeStream:
    """A ``pipe:`` command's stdout. stdin is /dev/null; at end of stream the exit status is checked
    (a failing command is a failed shard, with its stderr); closing early kills the command."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 -- closed in close()
        self.proc = subprocess.Popen(url.removeprefix("pipe:"), shell=True, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self.stderr)

    def read(self, size: int = -1) -> bytes:
        data = self.proc.stdout.read(size)
        if not data and size != 0:
            self._check()
        return data

    def _check(self) -> None:
        status = self.proc.wait()
        if status != 0:
            self.stderr.seek(0)
            tail = self.stderr.read()[-400:].decode(errors="replace").strip()
            raise OSError(f"command exited with status {status}" + (f": {tail}" if tail else ""))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.stdout.close()
        self.proc.wait()
        self.stderr.close()


def _open(url: str, storage_options: dict[str, Any] | None = None) -> _Opened:
    try:
        if url.startswith("pipe:"):
            stream = _PipeStream(url)
            return _Opened(stream, None, stream, {"store": "pipe"})
        if is_remote(url):
            fs, path = filesystem(url, storage_options, "data")
            with reaching(url, "data"):
                handle = fs.open(path, "rb")
                info = getattr(handle, "details", None) or fs.info(path)  # s3fs: the object's info when opened
            return _Opened(handle, None, handle, {"store": "fsspec", **info})
        path = url.removeprefix("file://")
        handle = open(path, "rb")  # noqa: SIM115 -- closed by the walker
        st = os.fstat(handle.fileno())
        return _Opened(handle, st.st_size, handle, {"store": "local", "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    except FileNotFoundError:
        raise ShardError(f"shard {url}: no such file") from None
    except StorageUnreachableError:
        raise  # the settings are wrong, not the shard: ends the command
    except StorageError as exc:
        raise ShardError(f"shard {url}: {exc}") from None
    except OSError as exc:
        raise ShardError(f"shard {url}: cannot open: {exc}") from None


def _is_compressed(url: str) -> bool:
    return url.split("?")[0].endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"))


@dataclass(frozen=True)
class RawSample:
    """One sample's members as bytes, by extension (lower-cased), with its position in the shard and its
    byte span: ``offset`` is where its first member's header starts, ``end`` where its last member's
    data ends, rounded up to a whole tar block (relative to what was parsed: the shard, or a span)."""

    position: int
    key: str
    fields: dict[str, bytes]
    offset: int = 0
    end: int = 0


def _pad(n: int) -> int:
    return -(-n // _TAR_BLOCK) * _TAR_BLOCK


def _samples(tar: tarfile.TarFile, url: str, wanted: set[int] | None, stop_after: int | None,
             first: int = 0, state: dict | None = None) -> Iterator[RawSample]:
    """Group a tar's members into samples (WebDataset's rule: consecutive members sharing a key; non-files
    and names starting with a dot are skipped), numbering them from ``first``. ``state`` receives
    ``data_end`` (where the last member's data ends) and ``complete`` (every member was read)."""
    state = {} if state is None else state
    state.update(data_end=0, complete=False)
    position, key, fields, start, data_end = first - 1, None, {}, 0, 0
    for info in tar:
        if not info.isfile():
            continue
        base, ext = base_plus_ext(info.name)
        if base is None or os.path.basename(base).startswith("."):
            continue
        if base != key:
            if key is not None:
                yield RawSample(position, key, fields, start, _pad(data_end))
            if stop_after is not None and position >= stop_after:
                return
            position, key, fields, start = position + 1, base, {}, info.offset
        data_end = state["data_end"] = info.offset_data + info.size
        if wanted is None or position in wanted:
            handle = tar.extractfile(info)
            data = handle.read() if handle is not None else b""
            if len(data) != info.size:
                raise ShardError(f"shard {url}: truncated inside member {info.name!r}")
            fields[ext.lower()] = data
    state["complete"] = True
    if key is not None and (stop_after is None or position <= stop_after):
        yield RawSample(position, key, fields, start, _pad(data_end))


def walk(url: str, wanted: set[int] | None = None, stop_after: int | None = None,
         storage_options: dict[str, Any] | None = None, digest: Any = None,
         on_open: Callable[[dict[str, Any]], None] | None = None) -> Iterator[RawSample]:
    """Yield every sample of a shard in order; only positions in ``wanted`` (all if None) carry data.

    Walking stops after position ``stop_after``. If the walk reaches the end of the tar, it checks
    that the archive is complete (the last member's data and the end-of-archive blocks are there)
    and raises :class:`ShardError` for a truncated or unreadable shard.

    ``on_open`` is called with what was opened (``{"store": "local", "size", "mtime_ns"}`` from
    ``fstat``, ``{"store": "fsspec", **info}`` of the object, ``{"store": "pipe"}``) before anything
    is read, and may raise :class:`ShardError` (the identity check of :mod:`rscert.data.shard_identity`).
    ``digest`` (an object with ``update(bytes)``) receives every byte of a *streamed* shard (object
    stores, pipes, compressed files; a whole walk reads the stream to its end); a seekable local
    file is not streamed, so it is not fed.
    """
    opened = _open(url, storage_options)
    if on_open is not None:
        try:
            on_open(opened.details)
        except BaseException:
            opened.closer.close()
            raise
    compressed = _is_compressed(url)
    seekable = opened.size is not None and not compressed
    counter = None if seekable else _Counting(opened.fileobj, digest)
    try:
        mode = "r:" if seekable else ("r|*" if compressed else "r|")
        tar = tarfile.open(fileobj=opened.fileobj if seekable else counter, mode=mode)  # noqa: SIM115
    except (tarfile.TarError, EOFError, OSError) as exc:
        opened.closer.close()
        raise ShardError(f"shard {url}: not a readable tar file ({exc})") from None
    position, state = -1, {}
    try:
        for sample in _samples(tar, url, wanted, stop_after, state=state):
            position = sample.position
            yield sample
        if not compressed and state["complete"]:
            _check_complete(url, tar, opened, counter, state["data_end"])
        elif digest is not None and counter is not None and state["complete"]:
            counter.drain()  # the compressed stream's trailer too
    except (tarfile.TarError, EOFError) as exc:
        raise ShardError(f"shard {url}: truncated or corrupt tar after sample {position} ({exc})") from None
    except OSError as exc:
        raise ShardError(f"shard {url}: read failed after sample {position} ({exc})") from None
    finally:
        opened.closer.close()


def sequential(url: str) -> bool:
    """Whether a shard can only be read from its first byte on (a ``pipe:`` stream, a compressed tar):
    its units are read in order over one stream (:class:`StreamCursor`), never by byte span."""
    return url.startswith("pipe:") or _is_compressed(url)


def read_span(url: str, offset: int, length: int, first: int, wanted: set[int] | None = None,
              storage_options: dict[str, Any] | None = None,
              on_open: Callable[[dict[str, Any]], None] | None = None) -> Iterator[RawSample]:
    """The samples in bytes ``[offset, offset + length)`` of a shard, numbered from ``first`` (only
    positions in ``wanted``, all if None, carry data): one
    ranged read (``seek`` + ``read`` locally, one ranged GET through fsspec elsewhere), then the same
    grouping as :func:`walk`. Offsets come from a shard index (:mod:`rscert.data.shard_index`); bytes
    that are not whole tar members there (a changed shard) raise :class:`ShardError`."""
    try:
        if is_remote(url):
            fs, path = filesystem(url, storage_options, "data")
            data = fs.cat_file(path, start=offset, end=offset + length)
        else:
            with open(url.removeprefix("file://"), "rb") as fh:
                if on_open is not None:  # what was opened must still be the indexed file (walk's on_open)
                    st = os.fstat(fh.fileno())
                    on_open({"store": "local", "size": st.st_size, "mtime_ns": st.st_mtime_ns})
                fh.seek(offset)
                data = fh.read(length)
    except FileNotFoundError:
        raise ShardError(f"shard {url}: no such file") from None
    except (OSError, StorageError) as exc:
        raise ShardError(f"shard {url}: ranged read of bytes {offset}..{offset + length} failed ({exc})") from None
    if len(data) != length:
        raise ShardError(f"shard {url}: {len(data)} bytes at {offset}, the index says {length} "
                         "(the shard changed since it was indexed)")
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r|")  # noqa: SIM115 -- in memory
        yield from _samples(tar, url, wanted, None, first)
    except (tarfile.TarError, EOFError) as exc:
        raise ShardError(f"shard {url}: bytes {offset}..{offset + length} are not the indexed samples ({exc}; "
                         "the shard changed since it was indexed)") from None


class StreamCursor:
    """Reads a sequential shard's units in order over one stream: a unit whose first position is at or
    after where the stream stands continues it; any other unit (another shard, an earlier position)
    starts a new stream. One worker given a shard's units in order reads the shard once."""

    def __init__(self, storage_options: dict[str, Any] | None = None) -> None:
        self.storage_options = storage_options
        self.url: str | None = None
        self.stream: Iterator[RawSample] | None = None
        self.next_position = 0
        self.opened = 0  # streams opened (for tests and benchmarks)

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()  # a generator: closing it kills the command / closes the file
        self.url, self.stream, self.next_position = None, None, 0

    def samples(self, url: str, positions: set[int], on_open: Callable[[dict[str, Any]], None] | None = None
                ) -> Iterator[RawSample]:
        """The samples at ``positions`` (with data), in order; stops after the last of them. ``on_open``
        (see :func:`walk`) is called when a new stream is opened."""
        if not positions:
            return
        if url != self.url or min(positions) < self.next_position or self.stream is None:
            self.close()
            self.url, self.stream = url, walk(url, storage_options=self.storage_options, on_open=on_open)
            self.opened += 1
        last = max(positions)
        try:
            for raw in self.stream:
                self.next_position = raw.position + 1
                if raw.position in positions:
                    yield raw
                if raw.position >= last:
                    return
        except BaseException:
            self.close()
            raise
        self.close()  # the stream ended


def _check_complete(url: str, tar: tarfile.TarFile, opened: _Opened, counter: _Counting | None, data_end: int) -> None:
    """A complete tar has every member's data and two zero blocks after the last member."""
    if counter is not None:
        counter.drain()
        size = counter.count
    else:
        size = opened.size or 0
    if data_end > size or tar.offset + 2 * _TAR_BLOCK > size:
        raise ShardError(f"shard {url}: truncated tar ({size} bytes; the archive needs more)")
    if counter is None:
        opened.fileobj.seek(tar.offset)
        if opened.fileobj.read(2 * _TAR_BLOCK).strip(b"\0"):
            raise ShardError(f"shard {url}: corrupt tar (no end-of-archive marker at byte {tar.offset})")


def shard_keys(url: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The keys of a shard's samples, in order (reads headers only; checks the archive is whole)."""
    return [s.key for s in walk(url, wanted=set(), storage_options=storage_options)]
