"""Downloads from a real HTTP server on 127.0.0.1: verified before the rename, nothing left on failure."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from advrobust.data import download, load_dataset, mnist
from advrobust.data.download import download_file, resolve_mirror
from advrobust.errors import ChecksumError, ConfigError, DataError

TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _serve(server: SimpleNamespace, fake: SimpleNamespace, mode: str = "ok", prefix: str = "/mnist/") -> str:
    for name in TEST_FILES:
        server.routes[prefix + name] = [(mode, fake.blobs[name])]
    return server.url + prefix.lstrip("/")


def test_download_then_load(
    fake_mnist: SimpleNamespace, http_server: SimpleNamespace, tmp_path: Path
) -> None:
    mirror = _serve(http_server, fake_mnist)
    data = load_dataset("mnist", split="test", root=tmp_path, download=True, mirror=mirror)
    np.testing.assert_array_equal(data.images[:, 0].numpy(), fake_mnist.arrays["t10k-images"])
    np.testing.assert_array_equal(data.labels.numpy(), fake_mnist.arrays["t10k-labels"])
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(TEST_FILES)  # no temp files
    for name in TEST_FILES:
        assert (tmp_path / "mnist" / name).read_bytes() == fake_mnist.blobs[name]
    # Present files are used as they are: a second load makes no request.
    load_dataset("mnist", split="test", root=tmp_path, download=True, mirror=mirror)
    assert all(count == 1 for count in http_server.hits.values())


def test_mirror_from_environment(
    fake_mnist: SimpleNamespace, http_server: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = _serve(http_server, fake_mnist, prefix="/elsewhere/")
    monkeypatch.setenv("ADVROBUST_MIRROR", mirror.rstrip("/"))  # a missing trailing slash is fine
    assert len(load_dataset("mnist", root=tmp_path, download=True)) == 20
    assert set(http_server.hits) == {"/elsewhere/" + name for name in TEST_FILES}


def test_wrong_checksum_keeps_nothing_and_is_not_retried(
    fake_mnist: SimpleNamespace, http_server: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = fake_mnist.spec.test[0]
    wrong = dataclasses.replace(images, md5="0" * 32)
    monkeypatch.setitem(
        mnist.SOURCES, "mnist", dataclasses.replace(fake_mnist.spec, test=(wrong, fake_mnist.spec.test[1]))
    )
    mirror = _serve(http_server, fake_mnist)
    with pytest.raises(ChecksumError) as info:
        load_dataset("mnist", root=tmp_path, download=True, mirror=mirror)
    message = str(info.value)
    assert "0" * 32 in message and fake_mnist.spec.test[0].md5 in message and "removed" in message
    assert list((tmp_path / "mnist").iterdir()) == []
    assert http_server.hits["/mnist/" + images.filename] == 1


def test_truncated_body_is_retried_then_fails_with_nothing_left(
    fake_mnist: SimpleNamespace, http_server: SimpleNamespace, tmp_path: Path
) -> None:
    mirror = _serve(http_server, fake_mnist, mode="truncate")
    with pytest.raises(DataError, match="truncated") as info:
        load_dataset("mnist", root=tmp_path, download=True, mirror=mirror)
    assert not isinstance(info.value, ChecksumError)
    assert "3 tries" in str(info.value) and "mirror" in str(info.value)
    assert list((tmp_path / "mnist").iterdir()) == []
    assert http_server.hits["/mnist/" + TEST_FILES[0]] == 3


def test_transient_failure_then_success(
    fake_mnist: SimpleNamespace, http_server: SimpleNamespace, tmp_path: Path
) -> None:
    mirror = _serve(http_server, fake_mnist)
    name = TEST_FILES[0]
    http_server.routes["/mnist/" + name] = [
        ("500", b""),
        ("truncate", fake_mnist.blobs[name]),
        ("ok", fake_mnist.blobs[name]),
    ]
    assert len(load_dataset("mnist", root=tmp_path, download=True, mirror=mirror)) == 20
    assert http_server.hits["/mnist/" + name] == 3


def test_404_is_a_data_error_and_not_retried(
    fake_mnist: SimpleNamespace, http_server: SimpleNamespace, tmp_path: Path
) -> None:
    mirror = http_server.url + "empty/"
    with pytest.raises(DataError, match="404") as info:
        load_dataset("mnist", root=tmp_path, download=True, mirror=mirror)
    assert mirror + TEST_FILES[0] in str(info.value) and "mirror" in str(info.value)
    assert http_server.hits == {"/empty/" + TEST_FILES[0]: 1}
    assert list((tmp_path / "mnist").iterdir()) == []


def test_failed_download_leaves_an_existing_file_untouched(
    http_server: SimpleNamespace, tmp_path: Path
) -> None:
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"old")
    http_server.routes["/file.bin"] = [("ok", b"new content")]
    with pytest.raises(ChecksumError):
        download_file(http_server.url + "file.bin", dest, "0" * 32)
    assert dest.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]
    download_file(http_server.url + "file.bin", dest, download.md5_hex(b"new content"))
    assert dest.read_bytes() == b"new content"


def test_connection_refused_is_retried_then_data_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    monkeypatch.setattr(download, "_BACKOFF_S", 0.0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    with pytest.raises(DataError, match="after 3 tries"):
        download_file(f"http://127.0.0.1:{port}/x", tmp_path / "x", "0" * 32, timeout=5)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", ["ftp://example.org/", "file:///etc/", "example.org/mnist"])
def test_only_http_mirrors(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="http"):
        resolve_mirror(url, "https://default/")
    with pytest.raises(ConfigError, match="http"):
        download_file(url + "x", tmp_path / "x", "0" * 32)


def test_mirror_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ADVROBUST_MIRROR", raising=False)
    assert resolve_mirror(None, "https://default/a") == "https://default/a/"
    monkeypatch.setenv("ADVROBUST_MIRROR", "https://env/")
    assert resolve_mirror(None, "https://default/") == "https://env/"
    assert resolve_mirror("http://arg/", "https://default/") == "http://arg/"


def test_default_mirrors_are_the_official_ones() -> None:
    from advrobust.data import cifar

    assert mnist.SOURCES["mnist"].mirror == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert (
        mnist.SOURCES["fashion-mnist"].mirror == "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    )
    assert cifar.MIRROR == "https://www.cs.toronto.edu/~kriz/"
