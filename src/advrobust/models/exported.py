"""torch.export programs (``.pt2``), loaded only after checking that loading them runs no untrusted code.

``torch.export.load`` can run code from the file: it unpickles weights and constants marked ``use_pickle``
and opaque constants with plain ``pickle``, retries its example inputs with ``weights_only=False``, parses
symbolic shapes with ``sympy.sympify`` (which evaluates Python), and resolves graph targets by attribute
lookup from ``torch`` (``torch.os.system`` included) -- its docs say never to load untrusted files.
``load_pt2`` reads the archive once and loads the program only when every entry is of a known kind, every
weight and constant is raw bytes (no pickle), the example inputs load under torch's weights-only unpickler,
every symbolic expression uses only shape symbols, numbers and arithmetic, and every graph target is an ATen
or prims operator (or a harmless ``operator``/``math`` function). Anything else needs ``trust_pickle=True``.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advrobust.errors import ModelFileError

_TRUST = (
    "load it only if you trust whoever made the file, with --trust-pickle SHA256 (trust_pickle=SHA256), "
    "the file's SHA-256 as its source publishes it"
)
_ENTRY = re.compile(
    r"[^/]+/(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/[\w.-]+\.json|data/weights/[\w.-]+|data/constants/[\w.-]+|data/sample_inputs/[\w.-]+\.pt"
    r"|extra/[\w./-]+)"
)
_SYMBOL = re.compile(r"[a-z]+\d+")
_SYMPY_FUNCTIONS = frozenset(
    {"FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt",
     "CeilDiv", "LShift", "RShift", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
     "RoundToInt", "RoundDecimal", "ToFloat", "FloatPow", "PowByNatural", "IntTrueDiv", "FloatTrueDiv",
     "OpaqueUnaryFn_sqrt", "Max", "Min", "Abs", "Integer", "Symbol", "Rational", "true", "false", "oo",
     "True", "False", "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite"}
)  # fmt: skip
_EXPRESSION = re.compile(r"[\w+\-*/%().,<>=!' ]*")
_OPERATORS = frozenset(
    {"getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "neg", "pow", "eq", "ne", "lt", "le",
     "gt", "ge", "and_", "or_", "not_", "abs"}
)  # fmt: skip


def _walk(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield k, v
            yield from _walk(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v, key)


def _target_ok(target: str) -> bool:
    if target.startswith(("torch.ops.aten.", "torch.ops.prims.")):
        return bool(re.fullmatch(r"torch\.ops\.(aten|prims)\.\w+(\.\w+)?", target))
    if target.startswith("_operator."):
        return target.removeprefix("_operator.") in _OPERATORS
    if target.startswith("math."):
        return bool(re.fullmatch(r"math\.[a-z]\w*", target))
    return False


def _expression_ok(expr: str) -> bool:
    # No attribute access: a dot may only sit in a number.
    if not _EXPRESSION.fullmatch(expr) or re.search(r"\.\s*[A-Za-z_]", expr):
        return False
    names = re.findall(r"[A-Za-z_]\w*", expr)
    return all(_SYMBOL.fullmatch(n) or n in _SYMPY_FUNCTIONS for n in names)


def unsafe_parts(data: bytes) -> list[str]:
    """What in the ``.pt2`` archive ``data`` could run code when loaded (empty: safe to load)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ModelFileError(f"not a .pt2 archive ({exc}): export it with torch.export.save") from None
    problems = [f"unknown entry {n}" for n in names if not n.endswith("/") and not _ENTRY.fullmatch(n)]
    for name in names:
        if re.search(r"/data/(weights|constants)/\w+_config\.json$", name):
            config = json.loads(archive.read(name)).get("config", {})
            for fqn, meta in config.items():
                path = str(meta.get("path_name", ""))
                if meta.get("use_pickle") or not re.fullmatch(r"(weight|tensor)_\w+", path):
                    problems.append(f"pickled {'weight' if 'weights' in name else 'constant'} {fqn}")
        elif "/data/sample_inputs/" in name:
            try:
                torch.load(io.BytesIO(archive.read(name)), weights_only=True)
            except Exception:
                problems.append(f"example inputs {name} need the full unpickler")
        elif "/models/" in name:
            program = json.loads(archive.read(name))
            for key, value in _walk(program):
                if key == "target" and isinstance(value, str) and not _target_ok(value):
                    problems.append(f"graph target {value[:80]}")
                elif key == "expr_str" and isinstance(value, str) and not _expression_ok(value):
                    problems.append(f"symbolic expression {value[:80]!r}")
    if not any("/models/" in n for n in names):
        problems.append("no models/*.json (a legacy or AOTInductor archive)")
    return sorted(set(problems))


class FixedBatch(nn.Module):
    """Run a model exported for one batch size on any batch: split into chunks, pad the last one.

    Padding repeats the last image; the model is in eval mode (fixed at export), so rows do not interact.
    Shape: x (N, C, H, W) -> (N, K).
    """

    def __init__(self, net: nn.Module, batch: int) -> None:
        super().__init__()
        self.net = net
        self.batch = batch

    def forward(self, x: Tensor) -> Tensor:
        outs = []
        for start in range(0, x.shape[0], self.batch):
            chunk = x[start : start + self.batch]
            k = chunk.shape[0]
            if k < self.batch:
                chunk = torch.cat([chunk, chunk[-1:].expand(self.batch - k, *chunk.shape[1:])])
            outs.append(self.net(chunk)[:k])
        return torch.cat(outs)


class ExportedModule(nn.Module):
    """An ``ExportedProgram``'s module; ``train()``/``eval()`` only set the flag (the graph's mode is fixed)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def train(self, mode: bool = True) -> ExportedModule:
        # Exported graphs refuse train()/eval(): their behaviour was fixed when they were exported.
        for module in self.modules():
            module.training = mode
        return self

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out


def load_pt2(
    path: Path, *, trust_pickle: str | None = None
) -> tuple[nn.Module, bytes, tuple[int, ...] | None]:
    """Load a ``torch.export.save`` file as a module; returns (module, file bytes, example input shape).

    The file is read once; the bytes checked are the bytes loaded. With ``trust_pickle`` (the file's
    expected SHA-256) a file with unsafe parts loads, once its digest matches.
    """
    from advrobust.models.trust import verify_digest

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"cannot read {path} ({exc.strerror}): check the path") from None
    if trust_pickle is not None:
        verify_digest(path, data, trust_pickle)
    problems = unsafe_parts(data)
    if problems and trust_pickle is None:
        shown = "; ".join(problems[:3]) + (f" and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise ModelFileError(f"{path} could run code when loaded ({shown}): {_TRUST}")
    try:
        program = torch.export.load(io.BytesIO(data))
    except Exception as exc:
        raise ModelFileError(
            f"{path} is not a loadable torch.export program ({type(exc).__name__}: {str(exc)[:200]}): "
            "re-export it with torch.export.save under this torch version"
        ) from None
    example: tuple[int, ...] | None = None
    args: Any = program.example_inputs[0] if program.example_inputs else ()
    first = args[0] if args else None
    if isinstance(first, Tensor):
        example = tuple(first.shape)
    module: nn.Module = ExportedModule(program.module())
    if first is not None and example is not None and len(example) == 4:
        # Exported without a dynamic batch dimension, the program's guards refuse any other batch size.
        try:
            with torch.no_grad():
                module(torch.zeros(example[0] + 1, *example[1:], dtype=first.dtype))
        except Exception:
            module = FixedBatch(module, example[0])
    return module, data, example
