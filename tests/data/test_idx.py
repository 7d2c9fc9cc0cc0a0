"""The IDX reader: exact round trips, and a DataError (never another exception) for anything malformed."""

from __future__ import annotations

import gzip
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advrobust.data.idx import gunzip_idx, parse_idx, read_idx
from advrobust.errors import DataError

FAST = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _header(magic: int, dims: list[int]) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)


@pytest.mark.parametrize("shape", [(5, 28, 28), (3, 2, 7), (0, 28, 28), (11,), (0,)])
def test_round_trip(helpers: SimpleNamespace, shape: tuple[int, ...]) -> None:
    array = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    out = read_idx(helpers.idx_gz(array), source="f", ndim=len(shape))
    assert out.dtype == np.uint8 and out.shape == shape
    np.testing.assert_array_equal(out, array)
    assert out.flags.writeable


@pytest.mark.parametrize(
    ("data", "ndim", "message"),
    [
        (gzip.compress(_header(0x0803, [2, 2, 2]) + bytes(8)), 1, "magic"),  # images read as labels
        (gzip.compress(_header(0x0903, [2, 2, 2]) + bytes(8)), 3, "magic"),  # signed byte type
        (gzip.compress(_header(0x0803, [2, 2, 2]) + bytes(7)), 3, "truncated IDX data"),
        (gzip.compress(_header(0x0803, [2, 2, 2]) + bytes(9)), 3, "unexpected bytes"),
        (gzip.compress(_header(0x0803, [2, 2])), 3, "truncated IDX header"),
        (gzip.compress(b""), 1, "truncated IDX header"),
        (gzip.compress(_header(0x0803, [1 << 20, 1 << 20, 1 << 20])), 3, "far beyond"),
        (_header(0x0801, [3]) + bytes(3), 1, "gzip"),  # not compressed
        (gzip.compress(_header(0x0801, [3]) + bytes(3)) + b"trailing junk", 1, "gzip"),
        (b"", 1, "truncated IDX header"),
    ],
)
def test_malformed_files_name_the_problem(data: bytes, ndim: int, message: str) -> None:
    with pytest.raises(DataError, match=message) as info:
        read_idx(data, source="some/file.gz", ndim=ndim)
    assert "some/file.gz" in str(info.value) and "download it again" in str(info.value)
    assert "\n" not in str(info.value)


def test_corrupt_crc_is_caught(helpers: SimpleNamespace) -> None:
    data = bytearray(helpers.idx_gz(np.arange(50, dtype=np.uint8)))
    data[-8] ^= 0xFF  # the CRC32 in the gzip trailer
    with pytest.raises(DataError, match="gzip"):
        read_idx(bytes(data), source="f", ndim=1)


def test_parse_idx_checks_raw_length() -> None:
    raw = _header(0x0801, [4]) + bytes(4)
    assert parse_idx(raw, source="f", ndim=1).shape == (4,)
    with pytest.raises(DataError, match="header says 4"):
        parse_idx(raw + b"\x00", source="f", ndim=1)
    assert gunzip_idx(gzip.compress(raw), source="f", ndim=1) == raw


@FAST
@given(data=st.binary(max_size=512), ndim=st.sampled_from([1, 3]))
def test_random_bytes_raise_data_error(data: bytes, ndim: int) -> None:
    with pytest.raises(DataError):
        read_idx(data, source="random", ndim=ndim)


@FAST
@given(cut=st.integers(min_value=0, max_value=10_000), ndim=st.sampled_from([1, 3]))
def test_every_truncation_raises_data_error(helpers: SimpleNamespace, cut: int, ndim: int) -> None:
    shape = (40,) if ndim == 1 else (3, 28, 28)
    array = np.random.default_rng(cut).integers(0, 256, size=shape, dtype=np.uint8)
    valid = helpers.idx_gz(array)
    with pytest.raises(DataError):
        read_idx(valid[: cut % len(valid)], source="truncated", ndim=ndim)


@FAST
@given(payload=st.binary(max_size=300), ndim=st.sampled_from([1, 3]))
def test_valid_gzip_of_random_content_is_read_exactly_or_refused(payload: bytes, ndim: int) -> None:
    try:
        out = read_idx(gzip.compress(payload), source="random", ndim=ndim)
    except DataError:
        return
    # Accepted only if it really is an IDX file whose header matches its length.
    dims = [int.from_bytes(payload[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    assert payload[:4] == bytes([0, 0, 8, ndim])
    assert list(out.shape) == dims
    assert out.tobytes() == payload[4 + 4 * ndim :]


@FAST
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_bit_flips_give_data_error_or_the_same_array(
    helpers: SimpleNamespace, position: int, bit: int
) -> None:
    array = np.arange(60, dtype=np.uint8)
    data = bytearray(helpers.idx_gz(array))
    data[position % len(data)] ^= 1 << bit
    try:
        out = read_idx(bytes(data), source="flipped", ndim=1)
    except DataError:
        return
    np.testing.assert_array_equal(out, array)  # only header fields like mtime can flip harmlessly
