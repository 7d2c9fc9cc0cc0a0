"""A model behind an HTTP endpoint: the black box an attacker can only query.

Protocol (what ``advrobust serve`` speaks): ``GET /info`` returns JSON ``{"mode": "scores" | "labels",
"input_shape": [C, H, W], "num_classes": K, "max_batch": B}``; ``POST /predict`` takes a batch of images in
[0, 1] and returns one answer per image, either as JSON (``{"inputs": [...]}`` -> ``{"scores": [[...]]}`` or
``{"labels": [...]}``) or as safetensors bytes (``application/octet-stream``, tensor ``inputs`` float32
(N, C, H, W) -> ``scores`` float32 (N, K) or ``labels`` int64 (N,)).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import safetensors.torch
import torch
from torch import Tensor, nn

from advrobust.errors import AdvrobustError, ConfigError
from advrobust.models.external import hard_logits
from advrobust.models.onnx_model import scores_as_logits

Mode = Literal["scores", "labels"]
Encoding = Literal["binary", "json"]
LOG_FORMAT = "advrobust.query-log/1"
BINARY_TYPE = "application/octet-stream"
_log = logging.getLogger(__name__)


class RemoteModelError(AdvrobustError):
    """An endpoint that fails, times out, answers malformed data, or a query budget that is spent."""


def sample_key(x: Tensor) -> str:
    """The query log's key of one image: sha256 of its float32 bytes and shape."""
    row = x.detach().to("cpu", torch.float32).contiguous()
    digest = hashlib.sha256(str(tuple(row.shape)).encode())
    digest.update(row.numpy().tobytes())
    return digest.hexdigest()


class QueryLog:
    """An append-only JSONL file of answered queries (image key -> answer), so a rerun sends none twice.

    The first line names the endpoint and mode; a torn last line (a crash mid-write) is dropped on opening.
    """

    def __init__(self, path: str | os.PathLike[str], *, url: str, mode: Mode) -> None:
        self.path = Path(path)
        self.answers: dict[str, Any] = {}
        header = {"format": LOG_FORMAT, "url": url, "mode": mode}
        if self.path.exists() and self.path.stat().st_size > 0:
            self._read(header)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(header) + "\n", encoding="utf-8")

    def _read(self, header: dict[str, Any]) -> None:
        raw = self.path.read_bytes()
        end = raw.rfind(b"\n") + 1
        if end < len(raw):
            with self.path.open("r+b") as f:  # drop the torn last line, so appends start on a fresh line
                f.truncate(end)
        lines = raw[:end].decode("utf-8", errors="replace").splitlines()
        try:
            first = json.loads(lines[0]) if lines else {}
        except ValueError:
            first = {}
        if first.get("format") != LOG_FORMAT:
            raise ConfigError(f"{self.path} is not an advrobust query log: pass another --query-log path")
        if first.get("url") != header["url"] or first.get("mode") != header["mode"]:
            raise ConfigError(
                f"{self.path} logs {first.get('url')} ({first.get('mode')}), not {header['url']} "
                f"({header['mode']}): pass another --query-log path"
            )
        for number, line in enumerate(lines[1:], start=2):
            try:
                entry = json.loads(line)
                self.answers[str(entry["key"])] = entry["out"]
            except (ValueError, KeyError, TypeError):
                raise ConfigError(
                    f"{self.path} line {number} is not a logged query: restore the file or start a new log"
                ) from None

    def append(self, keys: Sequence[str], outputs: Sequence[Any]) -> None:
        """Record answers, flushed and synced before returning (an error later loses none of them)."""
        lines = "".join(json.dumps({"key": k, "out": o}) + "\n" for k, o in zip(keys, outputs, strict=True))
        with self.path.open("a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
        self.answers.update(zip(keys, outputs, strict=True))


class RemoteModel(nn.Module):
    """A classifier behind an HTTP endpoint (``advrobust serve`` or any server speaking the protocol above).

    Batches of at most ``batch_size`` images per request (default: the server's ``max_batch``); failed
    requests (connection errors, timeouts after ``timeout`` seconds, HTTP 429 and 5xx) are retried
    ``retries`` times with exponential backoff from ``backoff`` seconds, then reported; at most
    ``rate_limit`` requests per second; ``max_queries`` caps the images sent in all. With ``query_log`` every
    answer is logged and images already answered are replayed from the log, never sent again.
    Scores that are probabilities are returned as log-probabilities; labels as ``hard_logits``.
    Shape: x (N, C, H, W) in [0, 1] -> (N, K), no gradients.
    """

    def __init__(
        self,
        url: str,
        *,
        mode: Mode | None = None,
        num_classes: int | None = None,
        input_shape: Sequence[int] | None = None,
        batch_size: int | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        rate_limit: float | None = None,
        max_queries: int | None = None,
        encoding: Encoding = "binary",
        query_log: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"{url!r} is not an http(s) URL: pass e.g. http://127.0.0.1:8000")
        for name, value, low in (("timeout", timeout, 0.0), ("backoff", backoff, -1e-12)):
            if not value > low:
                raise ConfigError(f"{name} must be > {max(low, 0):g}, got {value}")
        if (
            retries < 0
            or (rate_limit is not None and rate_limit <= 0)
            or (max_queries is not None and max_queries < 1)
        ):
            raise ConfigError("retries must be >= 0, rate_limit > 0 and max_queries >= 1: fix the options")
        if encoding not in ("binary", "json"):
            raise ConfigError(f"encoding must be 'binary' or 'json', got {encoding!r}")
        self.url = url.rstrip("/").removesuffix("/predict")
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.rate_limit, self.max_queries, self.encoding = rate_limit, max_queries, encoding
        loopback = parsed.hostname in ("127.0.0.1", "localhost", "::1")
        # Local endpoints never go through a proxy from the environment.
        handlers = [urllib.request.ProxyHandler({})] if loopback else []
        self._opener = urllib.request.build_opener(*handlers)
        self._last_request = -float("inf")
        self.sent = self.replayed = self.requests = self.failures = 0
        self.log: QueryLog | None = None
        served = self._info() if None in (mode, num_classes, input_shape) else {}
        self.mode: Mode = mode or served.get("mode", "scores")
        if self.mode not in ("scores", "labels"):
            raise RemoteModelError(f"{self.url} serves mode {self.mode!r}: expected 'scores' or 'labels'")
        classes = num_classes if num_classes is not None else served.get("num_classes")
        shape = input_shape if input_shape is not None else served.get("input_shape")
        if self.mode == "labels" and classes is None:
            raise ConfigError(f"{self.url} answers labels only: pass --num-classes K")
        self.num_classes: int | None = int(classes) if classes is not None else None
        self.input_shape: tuple[int, ...] | None = tuple(int(s) for s in shape) if shape is not None else None
        limit = served.get("max_batch")
        self.batch_size = int(batch_size or (limit if isinstance(limit, int) and limit > 0 else 256))
        if query_log is not None:
            self.log = QueryLog(query_log, url=self.url, mode=self.mode)

    def info(self) -> dict[str, Any]:
        """Provenance: the endpoint, what it serves, the queries sent and replayed from the log."""
        return {
            "url": self.url,
            "mode": self.mode,
            "encoding": self.encoding,
            "queries_sent": self.sent,
            "queries_replayed": self.replayed,
            "requests": self.requests,
            "failed_requests": self.failures,
            "query_log": str(self.log.path) if self.log is not None else None,
        }

    # HTTP.
    def _request(self, path: str, body: bytes | None, content_type: str | None) -> tuple[bytes, str]:
        """One request with retries, backoff and the rate limit; returns (body, content type)."""
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            if self.rate_limit is not None:
                wait = self._last_request + 1.0 / self.rate_limit - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            self._last_request = time.monotonic()
            self.requests += 1
            headers = {"Content-Type": content_type} if content_type else {}
            request = urllib.request.Request(self.url + path, data=body, headers=headers)
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    return response.read(), response.headers.get("Content-Type", "")
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:200].decode("utf-8", errors="replace")
                if exc.code != 429 and exc.code < 500:
                    raise RemoteModelError(
                        f"{self.url}{path} refused the request (HTTP {exc.code}: {detail}): fix the inputs or endpoint"
                    ) from None
                last = f"HTTP {exc.code}: {detail}"
            except TimeoutError:
                last = f"no answer within {self.timeout:g} s"
            except (urllib.error.URLError, ConnectionError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                if isinstance(reason, (TimeoutError, socket.timeout)):
                    last = f"no answer within {self.timeout:g} s"
                else:
                    last = f"connection failed ({reason})"
            self.failures += 1
            _log.warning("request %d to %s%s failed: %s", attempt + 1, self.url, path, last)
        fix = ": check the server, or raise --retries / --timeout"
        if self.log is not None:
            fix = f"; the query log {self.log.path} keeps the {len(self.log.answers)} answered queries: rerun to resume"
        raise RemoteModelError(f"{self.url}{path} failed {self.retries + 1} times (last: {last}){fix}")

    def _info(self) -> dict[str, Any]:
        body, _ = self._request("/info", None, None)
        try:
            served = json.loads(body)
        except ValueError:
            served = None
        if not isinstance(served, dict):
            raise RemoteModelError(
                f"{self.url}/info did not return a JSON object: is it an advrobust endpoint?"
            )
        return served

    def _send(self, x: Tensor) -> list[Any]:
        """Answers for a batch of images (one request): a list of score lists or of labels."""
        key = "scores" if self.mode == "scores" else "labels"
        if self.encoding == "json":
            body, kind = self._request(
                "/predict", json.dumps({"inputs": x.tolist()}).encode(), "application/json"
            )
        else:
            body, kind = self._request(
                "/predict", safetensors.torch.save({"inputs": x.contiguous()}), BINARY_TYPE
            )
        try:
            if kind.startswith(BINARY_TYPE):
                answer: Any = safetensors.torch.load(body)[key].tolist()
            else:
                answer = json.loads(body)[key]
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # malformed bytes: the parser may raise anything, or panic
            raise RemoteModelError(
                f"{self.url}/predict returned no {key!r}: is it an advrobust endpoint?"
            ) from None
        if not isinstance(answer, list) or len(answer) != x.shape[0]:
            raise RemoteModelError(
                f"{self.url}/predict answered {len(answer) if isinstance(answer, list) else type(answer).__name__} "
                f"{key} for {x.shape[0]} images: the endpoint is broken"
            )
        return answer

    def forward(self, x: Tensor) -> Tensor:
        images = x.detach().to("cpu", torch.float32).contiguous()
        keys = [sample_key(row) for row in images]
        known: dict[str, Any] = self.log.answers if self.log is not None else {}
        fresh: dict[str, Any] = {}
        todo: list[int] = []
        for i, key in enumerate(keys):
            if key in known:
                self.replayed += 1
            elif key not in fresh:
                fresh[key] = None
                todo.append(i)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            if self.max_queries is not None and self.sent + len(chunk) > self.max_queries:
                raise RemoteModelError(
                    f"the query budget of {self.max_queries} images for {self.url} is spent: raise max_queries"
                )
            answers = self._send(images[chunk])
            self.sent += len(chunk)
            chunk_keys = [keys[i] for i in chunk]
            if self.log is not None:
                self.log.append(chunk_keys, answers)
            fresh.update(zip(chunk_keys, answers, strict=True))
        outputs = [fresh[k] if k in fresh else known[k] for k in keys]
        return self._as_logits(outputs).to(x.device)

    def _as_logits(self, outputs: list[Any]) -> Tensor:
        try:
            if self.mode == "labels":
                labels = torch.tensor(outputs, dtype=torch.long)
                if (
                    labels.dim() != 1
                    or self.num_classes is None
                    or not bool(((labels >= 0) & (labels < self.num_classes)).all())
                ):
                    raise ValueError("labels out of range")
                return hard_logits(labels, self.num_classes)
            scores = torch.tensor(outputs, dtype=torch.float32)
        except (ValueError, TypeError) as exc:
            raise RemoteModelError(
                f"{self.url}/predict answered malformed {self.mode} ({exc}): the endpoint is broken"
            ) from None
        if scores.dim() != 2 or not bool(torch.isfinite(scores).all()):
            raise RemoteModelError(
                f"{self.url}/predict answered scores of shape {tuple(scores.shape)} or non-finite ones"
            )
        return scores_as_logits(scores)
