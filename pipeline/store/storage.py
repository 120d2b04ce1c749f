"""fsspec access for shards, checkpoints and outputs: one place that turns URLs into filesystems,
names the package a scheme needs, and creates files exclusively.

Storage options (``--storage-options '{"anon": false}'``, ``storage_options:`` in YAML) reach every
filesystem rscert opens. S3-compatible endpoints (MinIO, Ceph, R2) need no option: s3fs builds its
client with botocore, which reads the standard AWS settings, ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``) included, and the usual credentials chain.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from rscert.store.atomic import atomic_path

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

# Packages fsspec needs for the schemes users name most (fsspec's registry knows the rest).
PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
            "abfss": "adlfs", "http": "aiohttp", "https": "aiohttp", "hf": "huggingface_hub"}


class StorageError(ValueError):
    """A URL rscert cannot open: an unknown scheme, or a scheme whose package is not installed."""


class StorageUnreachableError(StorageError):
    """An object store that cannot be reached or that refuses the credentials: the user's settings
    (endpoint, credentials, network) must change, so it ends the command with one line naming them."""


_ENDPOINT_HINT = ("set AWS_ENDPOINT_URL (or --storage-options '{\"endpoint_url\": \"http://HOST:PORT\"}') for an "
                  "S3-compatible store (MinIO, Ceph, R2), or check the network")
_CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or pass --storage-options "
                     "'{\"anon\": true}' for a public bucket")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def describe_storage_error(exc: BaseException) -> str | None:
    """One line for an object-store failure that only the user's settings can fix (an endpoint that
    cannot be reached, missing or refused credentials), naming the settings; None for anything else.
    botocore's exceptions are recognised by class name, so botocore is not imported here."""
    for err in _chain(exc):
        names = {cls.__name__ for cls in type(err).__mro__}
        if names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"}:
            endpoint = getattr(err, "kwargs", {}).get("endpoint_url", "")
            where = f" at {endpoint}" if endpoint else ""
            default = "" if os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") else \
                " (no AWS_ENDPOINT_URL is set, so this is AWS S3)"
            return f"cannot reach the object store{where}{default}: {_ENDPOINT_HINT}"
        if "NoCredentialsError" in names or "PartialCredentialsError" in names:
            return f"no credentials for the object store: {_CREDENTIALS_HINT}"
        code = str(getattr(err, "response", {}).get("Error", {}).get("Code", "")) if "ClientError" in names else ""
        if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "AccessDenied"}:
            return f"the object store refused the credentials ({code}): {_CREDENTIALS_HINT}"
    return None


@contextlib.contextmanager
def reaching(url: str, setting: str) -> Iterator[None]:
    """Turn an object-store failure of :func:`describe_storage_error` inside the block into
    :class:`StorageUnreachableError` naming the setting and the URL; everything else passes unchanged."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        problem = describe_storage_error(exc)
        if problem is None:
            raise
        raise StorageUnreachableError(f"{setting}: {url}: {problem}") from None


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


def write_whole(target: str, data: bytes, setting: str, storage_options: dict[str, Any] | None = None) -> str:
    """Write ``data`` to ``target``, a local path or any fsspec URL, whole or not at all, and return
    ``target`` as given. Locally: parent folders are created, the bytes go to a hidden temporary name
    that is then renamed over the target. Elsewhere: one ``pipe_file`` (a single PUT on object stores,
    so a reader sees the old object or the new one). A URL rscert cannot open raises
    :class:`StorageError` naming ``setting``."""
    if not is_remote(target):
        path = target.removeprefix("file://")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        return target
    fs, path = filesystem(target, storage_options, setting)
    fs.pipe_file(path, data)
    return target


def check_writable_url(target: str, setting: str, storage_options: dict[str, Any] | None = None) -> None:
    """Refuse, before any work, an output URL whose scheme is unknown or whose package is missing."""
    if is_remote(target):
        filesystem(target, storage_options, setting)


def join_url(folder: str, name: str) -> str:
    """``folder/name`` for a local folder or a URL (``s3://b/figs`` + ``x.png``)."""
    return f"{folder.rstrip('/')}/{name}" if is_remote(folder) else os.path.join(folder, name)
