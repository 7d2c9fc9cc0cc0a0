"""RemoteModel against in-process servers that fail, stall or answer: retries, reports, the query log."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from advrobust.errors import ConfigError
from advrobust.models.remote import QueryLog, RemoteModel, RemoteModelError
from advrobust.serve import ModelServer, _Handler


class _Faulty(_Handler):
    """Follows the server's plan, one action per POST: 'ok', '500' or 'slow' (answers after 0.6 s)."""

    server: _PlannedServer

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        action = self.server.plan.pop(0) if self.server.plan else "ok"
        if action == "500":
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self._error(500, "boom")
            return
        if action == "slow":
            time.sleep(0.6)
        super().do_POST()


class _PlannedServer(ModelServer):
    plan: list[str]


@pytest.fixture
def server(trained_cnn: nn.Module) -> Iterator[_PlannedServer]:
    srv = _PlannedServer(trained_cnn, mode="scores", input_shape=(1, 28, 28), num_classes=10, max_batch=64)
    srv.RequestHandlerClass = _Faulty
    srv.plan = []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def _images(batch: tuple[Tensor, Tensor], n: int, offset: int = 0) -> Tensor:
    return batch[0][offset : offset + n]


def test_answers_match_the_local_model_in_both_encodings(
    server: _PlannedServer, trained_cnn: nn.Module, batch: tuple[Tensor, Tensor]
) -> None:
    x = _images(batch, 20)
    with torch.no_grad():
        local = trained_cnn(x)
    for encoding in ("binary", "json"):
        remote = RemoteModel(server.url, encoding=encoding, batch_size=7)  # type: ignore[arg-type]
        assert (remote.mode, remote.num_classes, remote.input_shape) == ("scores", 10, (1, 28, 28))
        assert torch.allclose(remote(x), local, atol=1e-5)
        assert remote.requests == 1 + 3  # /info, then 20 images in batches of at most 7
    labels = RemoteModel(server.url, mode="labels", num_classes=10, input_shape=(1, 28, 28))
    server.mode = "labels"
    assert torch.equal(labels(x).argmax(dim=1), local.argmax(dim=1))


def test_failures_are_retried_then_reported_with_the_log_intact(
    server: _PlannedServer, trained_cnn: nn.Module, batch: tuple[Tensor, Tensor], tmp_path: Path
) -> None:
    log = tmp_path / "queries.jsonl"
    remote = RemoteModel(server.url, retries=2, backoff=0.01, query_log=log)
    server.plan = ["500", "500"]  # two failures, then an answer: retried
    first = remote(_images(batch, 10))
    assert remote.failures == 2 and remote.sent == 10
    server.plan = ["500"] * 3
    with pytest.raises(
        RemoteModelError, match=r"failed 3 times \(last: HTTP 500.*keeps the 10 answered queries"
    ):
        remote(_images(batch, 5, offset=10))
    lines = log.read_text().splitlines()
    assert len(lines) == 11 and all(json.loads(line) for line in lines)
    # Resume: the logged answers are replayed, only the new images are sent.
    before = server.queries
    again = RemoteModel(server.url, query_log=log)
    assert torch.equal(again(_images(batch, 10)), first)
    assert server.queries == before and again.replayed == 10 and again.sent == 0
    again(_images(batch, 15))
    assert server.queries == before + 5
    with torch.no_grad():
        assert torch.allclose(again(_images(batch, 15)), trained_cnn(_images(batch, 15)), atol=1e-5)


def test_timeouts_are_retried_then_reported(server: _PlannedServer, batch: tuple[Tensor, Tensor]) -> None:
    remote = RemoteModel(server.url, timeout=0.2, retries=1, backoff=0.01)
    server.plan = ["slow"]
    remote(_images(batch, 4))  # the retry gets an answer
    assert remote.failures == 1
    server.plan = ["slow", "slow"]
    with pytest.raises(RemoteModelError, match=r"failed 2 times \(last: no answer within 0.2 s\)"):
        remote(_images(batch, 4, offset=4))


def test_client_errors_are_not_retried_and_budget_and_rate_limit_hold(
    server: _PlannedServer, batch: tuple[Tensor, Tensor]
) -> None:
    remote = RemoteModel(server.url, retries=3, backoff=0.01, input_shape=(1, 28, 28), max_queries=12)
    with pytest.raises(RemoteModelError, match=r"HTTP 400"):
        remote(torch.rand(2, 1, 14, 14))
    assert remote.failures == 0
    remote(_images(batch, 10))
    with pytest.raises(RemoteModelError, match=r"query budget of 12"):
        remote(_images(batch, 5, offset=10))
    limited = RemoteModel(server.url, batch_size=2, rate_limit=20.0)
    start = time.monotonic()
    limited(_images(batch, 8))  # 4 requests at most 20 per second
    assert time.monotonic() - start >= 3 / 20


def test_query_log_header_and_torn_lines(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    log = QueryLog(path, url="http://127.0.0.1:1", mode="scores")
    log.append(["a", "b"], [[0.0, 1.0], [1.0, 0.0]])
    with path.open("a") as f:
        f.write('{"key": "c", "out"')  # a crash mid-write
    reopened = QueryLog(path, url="http://127.0.0.1:1", mode="scores")
    assert set(reopened.answers) == {"a", "b"}
    assert path.read_text().endswith("\n")
    with pytest.raises(ConfigError, match=r"not http://127.0.0.1:2"):
        QueryLog(path, url="http://127.0.0.1:2", mode="scores")


def test_unreachable_endpoint_is_reported() -> None:
    with pytest.raises(RemoteModelError, match=r"connection failed"):
        RemoteModel("http://127.0.0.1:9", retries=1, backoff=0.01, timeout=1.0)
    with pytest.raises(ConfigError, match=r"not an http"):
        RemoteModel("ftp://example")
