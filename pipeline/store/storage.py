"""fsspec access for shards, checkpoints and outputs: one place that turns URLs into filesystems,
names the package a scheme needs, and creates files exclusively.

Storage options (``--storage-options '{"anon": false}'``, ``storage_options:`` in YAML) reach every
filesystem rscert opens. S3-compatible endpoints (MinIO, Ceph, R2) need no option: s3fs builds its
client with botocore, which reads the standard AWS settings, ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``) included, and the usual credentials chain.
"""

from __future__ import annotations

import os
import re
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

# Packages fsspec needs for the schemes users name most (fsspec's registry knows the rest).
PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
            "abfss": "adlfs", "http": "aiohttp", "https": "aiohttp", "hf": "huggingface_hub"}


class StorageError(ValueError):
    """A URL rscert cannot open: an unknown scheme, or a scheme whose package is not installed."""


def scheme(url: str) -> str | None:
    """The URL's scheme (``s3``), or None for a plain local path."""
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else None


def is_remote(url: str) -> bool:
    return scheme(url) not in (None, "file", "local")


def filesystem(url: str, storage_options: dict[str, Any] | None, setting: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(filesystem, path)`` for a URL; a missing package or unknown scheme raises
    :class:`StorageError` naming the setting and the package to install."""
    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except ImportError as exc:
        proto = scheme(url) or "?"
        package = PACKAGES.get(proto)
        hint = f"pip install {package}" if package else str(exc)
        raise StorageError(f"{setting}: {url!r} needs the package for {proto}:// URLs, which is not installed "
                           f"({hint})") from None
    except ValueError as exc:
        if "Protocol not known" in str(exc):
            raise StorageError(f"{setting}: {url!r} has an unknown scheme ({exc})") from None
        raise
    except TypeError as exc:  # an option the filesystem does not take
        raise StorageError(f"storage-options: not accepted for {url!r}: {exc}") from None


def protocol(fs: fsspec.AbstractFileSystem) -> str:
    """The filesystem's protocol name (its first, where fsspec lists several: ``s3`` for ``("s3", "s3a")``)."""
    return fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol


def unstrip(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A full URL again for a path the filesystem returned (``bucket/key`` -> ``s3://bucket/key``)."""
    if isinstance(fs, LocalFileSystem):
        return path
    return path if "://" in path else f"{protocol(fs)}://{path}"


def create_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Create ``path`` holding ``data`` only if it does not exist yet; else ``FileExistsError``.

    Exclusive where the storage offers it: locally ``O_CREAT | O_EXCL`` (the bytes go to a temporary
    file that is then hard-linked in place, so readers never see a partial file; ``os.open`` with
    ``O_EXCL`` on the final name where hard links are not supported); on S3 a conditional
    PUT (``If-None-Match: *``, supported by AWS S3 since 2024 and by MinIO and moto; s3fs's
    ``mode="create"``). Other fsspec filesystems get their ``pipe_file(mode="create")``, which for
    many is a check-then-write: a narrow race remains there, which the driver lease
    (:mod:`rscert.store.lease`) closes in practice.
    """
    if isinstance(fs, LocalFileSystem):
        tmp = f"{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # fails with FileExistsError if path exists: atomic and exclusive
        except FileExistsError:
            raise
        except OSError:  # no hard links on this filesystem: O_EXCL on the final name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        finally:
            os.unlink(tmp)
        return
    fs.pipe_file(path, data, mode="create")
    fs.invalidate_cache(path)
