"""Serve a local model over HTTP as a black box (scores or labels only), the way ``RemoteModel`` queries it.

Standard library only (``http.server``); one model call at a time. The protocol is in ``models.remote``.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn

from advrobust.errors import ConfigError
from advrobust.models.external import load_external, model_kind
from advrobust.models.io import load_model, read_card
from advrobust.models.remote import BINARY_TYPE, Mode

_log = logging.getLogger(__name__)
SERVE_FORMAT = "advrobust.serve/1"
# JSON spends up to ~25 bytes per pixel value; safetensors 4.
_JSON_BYTES_PER_VALUE = 32


class ModelServer(ThreadingHTTPServer):
    """An HTTP server answering ``/info`` and ``/predict`` for one model; ``queries`` counts images answered."""

    daemon_threads = True

    def __init__(
        self,
        model: nn.Module,
        *,
        mode: Mode,
        input_shape: Sequence[int],
        num_classes: int,
        host: str = "127.0.0.1",
        port: int = 0,
        max_batch: int = 1024,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        if mode not in ("scores", "labels"):
            raise ConfigError(f"mode must be 'scores' or 'labels', got {mode!r}")
        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model.eval()
        self.mode: Mode = mode
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = num_classes
        self.max_batch = max_batch
        self.bounds = bounds
        self.queries = 0
        self.lock = threading.Lock()
        values = max_batch * int(torch.tensor(self.input_shape).prod())
        self.max_body = values * _JSON_BYTES_PER_VALUE + 4096
        super().__init__((host, port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (its timeout) closed the socket: not an error of the server.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            _log.debug("client %s went away before its answer", client_address)
            return
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def info(self) -> dict[str, Any]:
        return {
            "format": SERVE_FORMAT,
            "mode": self.mode,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "max_batch": self.max_batch,
            "queries": self.queries,
        }

    def predict(self, x: Tensor) -> Tensor:
        """Scores (N, K) float32 or labels (N,) int64 for a checked batch."""
        with self.lock, torch.no_grad():
            scores: Tensor = self.model(x)
            self.queries += x.shape[0]
        if self.mode == "labels":
            return scores.argmax(dim=1).to(torch.int64)
        return scores.to(torch.float32).contiguous()


class _Handler(BaseHTTPRequestHandler):
    server: ModelServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s - " + format, self.address_string(), *args)

    def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._reply(status, json.dumps({"error": message}).encode())

    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/info":
            self._error(404, "unknown path: GET /info or POST /predict")
            return
        self._reply(200, json.dumps(self.server.info()).encode())

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/predict":
            self._error(404, "unknown path: POST /predict")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._error(411, "send a Content-Length")
            return
        if length < 0 or length > self.server.max_body:
            self._error(413, f"body of {length} bytes is over the limit of {self.server.max_body}")
            return
        body = self.rfile.read(length)
        binary = self.headers.get("Content-Type", "").startswith(BINARY_TYPE)
        try:
            x = _parse(body, binary)
        except ValueError as exc:
            self._error(400, str(exc))
            return
        problem = self._check(x)
        if problem:
            self._error(400, problem)
            return
        out = self.server.predict(x)
        key = "scores" if self.server.mode == "scores" else "labels"
        if binary:
            self._reply(200, safetensors.torch.save({key: out}), BINARY_TYPE)
        else:
            self._reply(200, json.dumps({key: out.tolist()}).encode())

    def _check(self, x: Tensor) -> str | None:
        server = self.server
        if x.dim() != 4 or tuple(x.shape[1:]) != server.input_shape:
            return (
                f"inputs have shape {list(x.shape)}: expected [N, {', '.join(map(str, server.input_shape))}]"
            )
        if not 1 <= x.shape[0] <= server.max_batch:
            return f"a batch holds 1 to {server.max_batch} images, got {x.shape[0]}"
        low, high = server.bounds
        if not bool(torch.isfinite(x).all()) or float(x.min()) < low - 1e-6 or float(x.max()) > high + 1e-6:
            return f"inputs must be finite and in [{low:g}, {high:g}]"
        return None


def _parse(body: bytes, binary: bool) -> Tensor:
    if binary:
        try:
            tensors = safetensors.torch.load(body)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # the parser may panic on hostile bytes
            raise ValueError("the body is not safetensors bytes") from None
        if "inputs" not in tensors:
            raise ValueError("the safetensors body has no 'inputs' tensor")
        return tensors["inputs"].to(torch.float32)
    try:
        data = json.loads(body)
        return torch.tensor(data["inputs"], dtype=torch.float32)
    except (ValueError, KeyError, TypeError, RecursionError):
        raise ValueError('the body is not JSON {"inputs": [[[[...]]]]} with an (N, C, H, W) array') from None


def open_server(
    spec: str,
    *,
    mode: Mode = "scores",
    host: str = "127.0.0.1",
    port: int = 0,
    max_batch: int = 1024,
    weights: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_shape: Sequence[int] | None = None,
    trust_pickle: str | None = None,
) -> ModelServer:
    """A ``ModelServer`` (bound, not yet serving) for a run directory or any local model spec.

    ``port=0`` takes a free port (``server.url`` tells which); call ``serve_forever()`` to answer requests.
    """
    if model_kind(spec) == "remote":
        raise ConfigError(f"{spec} is already served: serve a run directory or a local model file")
    if model_kind(spec) == "run":
        card = read_card(spec)
        model = load_model(spec, device="cpu")
        shape: Sequence[int] = card.input_shape
        classes = card.num_classes
    else:
        external = load_external(
            spec,
            access="score",  # outputs are all a server needs (ONNX runs on onnxruntime)
            weights=weights,
            mean=mean,
            std=std,
            input_shape=input_shape,
            trust_pickle=trust_pickle,
        )
        if external.input_shape is None or external.num_classes is None:
            raise ConfigError(f"the input shape of {spec} is unknown: pass --input-shape C H W")
        model, shape, classes = external.model, external.input_shape, external.num_classes
    return ModelServer(
        model,
        mode=mode,
        input_shape=shape,
        num_classes=classes,
        host=host,
        port=port,
        max_batch=max_batch,
    )
