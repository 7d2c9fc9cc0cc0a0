"""Strict reader of gzipped IDX files (the MNIST format): every malformed input is a DataError."""

from __future__ import annotations

import gzip
import io
import math
import zlib

import numpy as np
import numpy.typing as npt

from advrobust.errors import DataError

# Type code 0x08 is unsigned byte, the only one MNIST and Fashion-MNIST use.
_UBYTE = 0x08
# No real IDX file comes near this; it stops a corrupt header from asking for terabytes.
MAX_PAYLOAD = 1 << 31


def _fail(source: str, problem: str) -> DataError:
    return DataError(f"{source}: {problem}; delete the file and download it again, or check the path")


def gunzip_idx(data: bytes, *, source: str, ndim: int) -> bytes:
    """Decompress a gzipped IDX file of ``ndim`` dimensions and check its header and exact length."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb") as handle:
            header = handle.read(4 + 4 * ndim)
            expected = _payload_size(header, source=source, ndim=ndim)
            payload = handle.read(expected)
            if len(payload) != expected:
                raise _fail(source, f"truncated IDX data: {len(payload)} of {expected} bytes")
            if handle.read(1):
                raise _fail(source, f"unexpected bytes after the {expected} bytes of IDX data")
    except (OSError, EOFError, zlib.error) as err:
        raise _fail(source, f"not a valid gzip file ({type(err).__name__}: {err})") from None
    return header + payload


def parse_idx(raw: bytes, *, source: str, ndim: int) -> npt.NDArray[np.uint8]:
    """The uint8 array of a decompressed IDX file with ``ndim`` dimensions (header checked again).

    Shape: the dimensions in the header, e.g. (N, 28, 28) for images and (N,) for labels.
    """
    header = raw[: 4 + 4 * ndim]
    expected = _payload_size(header, source=source, ndim=ndim)
    if len(raw) != len(header) + expected:
        raise _fail(source, f"IDX data is {len(raw) - len(header)} bytes, the header says {expected}")
    dims = tuple(int(d) for d in np.frombuffer(header, dtype=">u4", offset=4))
    # A writable copy: torch.from_numpy wants one, and the bytes object stays immutable.
    return np.frombuffer(raw, dtype=np.uint8, offset=len(header)).reshape(dims).copy()


def read_idx(data: bytes, *, source: str, ndim: int) -> npt.NDArray[np.uint8]:
    """The uint8 array of a gzipped IDX file with ``ndim`` dimensions.

    Shape: the dimensions in the header, e.g. (N, 28, 28) for images and (N,) for labels.
    """
    return parse_idx(gunzip_idx(data, source=source, ndim=ndim), source=source, ndim=ndim)


def _payload_size(header: bytes, *, source: str, ndim: int) -> int:
    if len(header) < 4 + 4 * ndim:
        raise _fail(source, f"truncated IDX header: {len(header)} of {4 + 4 * ndim} bytes")
    magic = int.from_bytes(header[:4], "big")
    expected_magic = (_UBYTE << 8) | ndim
    if magic != expected_magic:
        raise _fail(source, f"bad IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x}")
    dims = [int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    size = math.prod(dims)
    if size > MAX_PAYLOAD:
        raise _fail(source, f"IDX header claims dimensions {dims} ({size} bytes), far beyond any real file")
    return size
