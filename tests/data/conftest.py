"""Fixtures for the data tests: tiny IDX / CIFAR files made on the spot, and a local HTTP server."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import os
import pickle
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from advrobust.data import cifar, download, mnist


def idx_gz(array: np.ndarray, *, level: int = 9, mtime: int = 0) -> bytes:
    """A gzipped IDX file (type ubyte) holding ``array``."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), compresslevel=level, mtime=mtime)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@dataclass
class FakeIdx:
    """Small MNIST-like files and the checksum table that accepts them (installed as SOURCES[name])."""

    arrays: dict[str, np.ndarray]  # "train-images", "train-labels", "t10k-images", "t10k-labels"
    blobs: dict[str, bytes]  # file name -> .gz bytes
    spec: mnist.IdxSource

    def write(self, folder: Path, names: list[str] | None = None) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for name, blob in self.blobs.items():
            if names is None or name in names:
                (folder / name).write_bytes(blob)
        return folder


@pytest.fixture
def fake_mnist(monkeypatch: pytest.MonkeyPatch) -> FakeIdx:
    """30 train and 20 test random 28x28 digits; SOURCES['mnist'] accepts exactly these files."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images": rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8),
        "train-labels": (np.arange(30) % 10).astype(np.uint8),
        "t10k-images": rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8),
        "t10k-labels": (np.arange(20)[::-1] % 10).astype(np.uint8),
    }
    blobs: dict[str, bytes] = {}
    files: dict[str, mnist.IdxFile] = {}
    for key, array in arrays.items():
        name = f"{key}-idx{array.ndim}-ubyte.gz"
        blobs[name] = idx_gz(array)
        raw_md5 = md5(gzip.decompress(blobs[name]))
        files[key] = mnist.IdxFile(name, md5(blobs[name]), raw_md5, ndim=array.ndim)
    spec = dataclasses.replace(
        mnist.SOURCES["mnist"],
        train=(files["train-images"], files["train-labels"]),
        test=(files["t10k-images"], files["t10k-labels"]),
    )
    monkeypatch.setitem(mnist.SOURCES, "mnist", spec)
    return FakeIdx(arrays=arrays, blobs=blobs, spec=spec)


@dataclass
class Server:
    """A local HTTP server: ``routes[path]`` is a list of (mode, body) answers, the last one repeating."""

    url: str
    routes: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)


@pytest.fixture
def http_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """A real HTTP server on 127.0.0.1 (ephemeral port); modes: ok, truncate (half the body), 404, 500."""
    monkeypatch.setattr(download, "_BACKOFF_S", 0.0)
    state = Server(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answers = state.routes.get(self.path, [("404", b"")])
            hit = state.hits.get(self.path, 0)
            state.hits[self.path] = hit + 1
            mode, body = answers[min(hit, len(answers) - 1)]
            if mode in ("404", "500"):
                self.send_error(int(mode))
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body if mode == "ok" else body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def cifar_batch(n: int, seed: int) -> dict[str, Any]:
    """A CIFAR-like batch dict: n random images as (n, 3072) uint8 rows and labels."""
    rng = np.random.default_rng(seed)
    return {
        "batch_label": f"fake batch {seed}",
        "labels": [int(v) for v in rng.integers(0, 10, size=n)],
        "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        "filenames": [f"img_{seed}_{i}.png" for i in range(n)],
    }


class Py2StylePickler(pickle._Pickler):
    """Writes bytes and str as Python 2 STRING opcodes, like the official CIFAR files (pickled by Python 2)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes | str) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def py2_pickle(obj: Any) -> bytes:
    """``obj`` pickled the way Python 2 did (protocol 2, STRING opcodes, __builtin__ names)."""
    buffer = io.BytesIO()
    Py2StylePickler(buffer, protocol=2).dump(obj)
    # GLOBAL opcodes are text lines, so this gives the pre-numpy-2 module name old pickles carry.
    return buffer.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


class Evil:
    """Unpickling this creates the folder ``marker``: the stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return (os.makedirs, (str(self.marker),))


@pytest.fixture(scope="session")
def helpers() -> SimpleNamespace:
    """The file makers above, for test modules (conftest itself is not importable by name)."""
    return SimpleNamespace(idx_gz=idx_gz, md5=md5, cifar_batch=cifar_batch, py2_pickle=py2_pickle, Evil=Evil)


@pytest.fixture
def fake_cifar(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Six tiny pickled batches (3 images each, protocol 4) and a checksum table that accepts them."""
    batches = {name: cifar_batch(3, seed) for seed, name in enumerate(cifar.BATCH_MD5)}
    blobs = {name: pickle.dumps(batch, protocol=4) for name, batch in batches.items()}
    monkeypatch.setattr(cifar, "BATCH_MD5", {name: md5(blob) for name, blob in blobs.items()})
    return {"batches": batches, "blobs": blobs}


@pytest.fixture
def real_mnist_dir() -> Path:
    """The folder with the four real MNIST files, from ADVROBUST_DATA; skips the test without it."""
    root = os.environ.get("ADVROBUST_DATA")
    if not root:
        pytest.skip("needs the real MNIST files: set ADVROBUST_DATA to the folder that holds mnist/")
    for folder in (Path(root) / "mnist", Path(root)):
        if (folder / "train-images-idx3-ubyte.gz").is_file():
            return folder
    pytest.skip(f"ADVROBUST_DATA={root} holds no train-images-idx3-ubyte.gz (in mnist/ or directly)")
