"""`advrobust serve` in a subprocess on 127.0.0.1, attacked over HTTP by Square and HopSkipJump."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from advrobust.attacks import HopSkipJump, Square
from advrobust.cli import main
from advrobust.models import ModelCard, save_model
from advrobust.models.remote import RemoteModel
from advrobust.threat import ThreatModel

Serve = Callable[[str], str]
# Requests to 127.0.0.1 never go through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def run_dir(trained_cnn: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    card = ModelCard.from_model(trained_cnn, input_shape=(1, 28, 28), dataset="mnist-mini")
    return save_model(trained_cnn, tmp_path_factory.mktemp("served") / "run", card)


@pytest.fixture
def serve(run_dir: Path) -> Iterator[Serve]:
    """Start `advrobust serve RUN_DIR --port 0 --mode MODE` and return its URL; stopped after the test."""
    processes: list[subprocess.Popen[str]] = []

    def start(mode: str) -> str:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "advrobust", "serve", str(run_dir), "--port", "0", "--mode", mode]
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        processes.append(process)
        lines: queue.Queue[str] = queue.Queue()
        assert process.stdout is not None
        stdout = process.stdout
        threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
        for _ in range(50):  # bounded: the server prints its URL once it listens
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                assert process.poll() is None, "the server exited"
                continue
            if " at http://127.0.0.1:" in line:
                return line.rsplit(" at ", 1)[1].strip()
        raise AssertionError("the server did not print its URL within 50 s")

    try:
        yield start
    finally:
        for process in processes:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _served_queries(url: str) -> int:
    with _OPENER.open(url + "/info", timeout=5) as response:
        return int(json.load(response)["queries"])


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def test_square_against_a_scores_endpoint(
    serve: Serve, trained_cnn: nn.Module, batch: tuple[Tensor, Tensor]
) -> None:
    url = serve("scores")
    x, y = batch[0][:30], batch[1][:30]
    remote = RemoteModel(url)
    clean = _accuracy(remote, x, y)
    assert clean == _accuracy(trained_cnn, x, y)
    before = _served_queries(url)
    attack = Square(threat=ThreatModel(norm="linf", eps=0.3), queries=100)
    x_adv, used = attack.run_with_queries(
        remote, x, y, generator=torch.Generator().manual_seed(0), check=False
    )
    assert int(used.max()) <= 100
    assert _served_queries(url) - before == int(used.sum()) <= 100 * x.shape[0]
    assert _accuracy(trained_cnn, x_adv, y) < clean - 0.2


def test_hopskipjump_against_a_labels_endpoint(
    serve: Serve, trained_cnn: nn.Module, batch: tuple[Tensor, Tensor]
) -> None:
    url = serve("labels")
    x, y = batch[0][:20], batch[1][:20]
    remote = RemoteModel(url)
    assert remote.mode == "labels"
    clean = _accuracy(remote, x, y)
    before = _served_queries(url)
    attack = HopSkipJump(threat=ThreatModel(norm="linf", eps=0.3), queries=200)
    x_adv, used = attack.run_with_queries(
        remote, x, y, generator=torch.Generator().manual_seed(0), check=False
    )
    assert int(used.max()) <= 200
    assert _served_queries(url) - before == int(used.sum())
    assert _accuracy(trained_cnn, x_adv, y) < clean - 0.2
    assert bool(attack.threat.contains(x_adv, x).all())


def test_cli_eval_of_an_endpoint_reports_decision_access(serve: Serve, tmp_path: Path) -> None:
    url = serve("labels")
    out, log = tmp_path / "eval.json", tmp_path / "queries.jsonl"
    args = ["eval", "--model", url, "--n", "12", "--eps", "0.3", "--queries", "100", "--query-log", str(log),
            "--json", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0
    result = json.loads(out.read_text())["results"][0]
    assert [a["name"] for a in result["attacks"]] == ["hopskipjump"]
    assert result["meta"]["access"] == "decision" and "upper bound" in result["meta"]["access_note"]
    served = _served_queries(url)
    assert served <= 12 * (100 + 3)  # the attack's budget, plus evaluation's clean and final checks
    assert main(args) == 0  # resumed from the log: nothing is sent again
    assert _served_queries(url) == served
    assert json.loads(out.read_text())["results"][0]["robust"] == result["robust"]
    assert main(["eval", "--model", url, "--access", "white-box", "--n", "4", "--quiet"]) == 2


def test_endpoint_refuses_bad_requests(serve: Serve) -> None:
    url = serve("scores")
    bad = json.dumps({"inputs": [[[[2.0]]]]}).encode()
    request = urllib.request.Request(url + "/predict", data=bad, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as error:
        _OPENER.open(request, timeout=5)
    assert error.value.code == 400
    with pytest.raises(urllib.error.HTTPError) as error:
        _OPENER.open(url + "/nothing", timeout=5)
    assert error.value.code == 404
