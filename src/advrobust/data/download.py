"""Data roots, checksums verified once per file version, and verified downloads over HTTP(S)."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Collection
from pathlib import Path

from advrobust.errors import ChecksumError, ConfigError, DataError
from advrobust.fileio import atomic_writer

logger = logging.getLogger(__name__)

DATA_ENV = "ADVROBUST_DATA"
MIRROR_ENV = "ADVROBUST_MIRROR"
DEFAULT_ROOT = "~/.cache/advrobust"
HOW_TO_GET = f"pass download=True (CLI: --download) or set {DATA_ENV} to the folder that holds the files"

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
_TRIES = 3
_BACKOFF_S = 1.0

# (resolved path, inode, size, mtime_ns, ctime_ns, accepted digests) -> the digest that matched, for files
# verified earlier in this process, so that loading a dataset again does not hash it again; a replaced or
# rewritten file gets a new key and is verified afresh.
_VERIFIED: dict[tuple[str, int, int, int, int, frozenset[str]], str] = {}


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``root``, else ``$ADVROBUST_DATA``, else ``~/.cache/advrobust``."""
    chosen = os.fspath(root) if root is not None else os.environ.get(DATA_ENV) or DEFAULT_ROOT
    return Path(chosen).expanduser()


def search_dirs(root: Path, name: str) -> tuple[Path, Path]:
    """Where a dataset's files may be: ``<root>/<name>/`` first, then ``<root>`` itself."""
    return (root / name, root)


def find_file(dirs: Collection[Path], filename: str) -> Path | None:
    """The first ``dir/filename`` that is a file, or None."""
    for folder in dirs:
        candidate = folder / filename
        if candidate.is_file():
            return candidate
    return None


def resolve_mirror(mirror: str | None, default: str) -> str:
    """The base URL to download from: ``mirror``, else ``$ADVROBUST_MIRROR``, else ``default``."""
    url = mirror or os.environ.get(MIRROR_ENV) or default
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise ConfigError(
            f"mirror {url!r} is not an http(s) URL; pass a base URL like https://host/path/ "
            f"(mirror= / --mirror / {MIRROR_ENV})"
        )
    return url if url.endswith("/") else url + "/"


def _key(path: Path, accepted: frozenset[str]) -> tuple[str, int, int, int, int, frozenset[str]]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, accepted)


def verified_digest(path: Path, accepted: Collection[str]) -> str | None:
    """The digest this version of ``path`` matched among ``accepted`` earlier in this process, or None."""
    return _VERIFIED.get(_key(path, frozenset(accepted)))


def remember_verified(path: Path, accepted: Collection[str], matched: str) -> None:
    """Record that this version of ``path`` matched ``matched``, one of ``accepted``."""
    _VERIFIED[_key(path, frozenset(accepted))] = matched


def md5_hex(data: bytes) -> str:
    """Hex MD5 of ``data`` (an integrity check against published sums, not a security measure)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def file_md5(path: Path) -> str:
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_md5(path: Path, expected: str) -> None:
    """Raise ChecksumError unless ``path`` has MD5 ``expected`` (cached per file version)."""
    if verified_digest(path, (expected,)) is not None:
        return
    got = file_md5(path)
    if got != expected:
        raise ChecksumError(
            f"{path}: md5 {got} differs from the expected {expected}; "
            "delete the file and download it again (download=True / --download)"
        )
    remember_verified(path, (expected,), expected)


class _TransientError(Exception):
    """A failure worth another try: connection errors, timeouts, 5xx, a body shorter than announced."""


def download_file(
    url: str, dest: Path, md5: str, *, timeout: float = _TIMEOUT_S, tries: int = _TRIES
) -> None:
    """Download ``url`` to ``dest``: streamed to a temporary file beside it, MD5-checked, then renamed.

    Connection errors, 5xx answers and truncated bodies are retried up to ``tries`` times; a checksum
    mismatch or a 4xx answer is not. On any failure nothing is left at ``dest`` or beside it.
    """
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ConfigError(f"refusing to download {url!r}: only http(s) URLs are allowed; fix the mirror URL")
    for attempt in range(1, tries + 1):
        try:
            _fetch(url, dest, md5, timeout)
            return
        except _TransientError as err:
            if attempt == tries:
                raise DataError(
                    f"download of {url} failed after {tries} tries ({err}); nothing was kept; check the "
                    f"network or use another mirror (mirror= / --mirror / {MIRROR_ENV}), then retry"
                ) from None
            logger.warning("download of %s failed (%s); try %d of %d", url, err, attempt + 1, tries)
            time.sleep(_BACKOFF_S * attempt)


def _fetch(url: str, dest: Path, md5: str, timeout: float) -> None:
    logger.info("downloading %s to %s", url, dest)
    digest = hashlib.md5(usedforsecurity=False)
    request = urllib.request.Request(url, headers={"User-Agent": "advrobust"})
    with atomic_writer(dest, "wb") as out:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                announced = response.headers.get("Content-Length")
                received = 0
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
        except urllib.error.HTTPError as err:
            if err.code >= 500:
                raise _TransientError(f"HTTP {err.code} {err.reason}") from None
            raise DataError(
                f"{url}: HTTP {err.code} {err.reason}; check the mirror URL (mirror= / --mirror / "
                f"{MIRROR_ENV}) and that it serves this file"
            ) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            raise _TransientError(f"{type(err).__name__}: {err}") from None
        if announced is not None and announced.isdigit() and received != int(announced):
            raise _TransientError(f"truncated: received {received} of {announced} bytes")
        got = digest.hexdigest()
        if got != md5:
            raise ChecksumError(
                f"{url}: downloaded md5 {got} differs from the expected {md5}; the file was removed; "
                "retry, or use another mirror (mirror= / --mirror / ADVROBUST_MIRROR)"
            )
    remember_verified(dest, (md5,), md5)
