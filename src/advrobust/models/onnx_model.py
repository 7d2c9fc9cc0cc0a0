"""ONNX models: a black box through onnxruntime, or white-box through a checked torch conversion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from advrobust.contract import Access
from advrobust.errors import ConfigError, ModelFileError

_EXTRA = "pip install 'advrobust[onnx]'"


def _runtime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(f"ONNX models need onnxruntime: {_EXTRA}") from None
    return onnxruntime


def scores_as_logits(scores: Tensor) -> Tensor:
    """Probabilities (>= 0, rows summing to 1) become log-probabilities; logits stay as they are.

    Both rank classes alike and give the same margins' signs, so score-based attacks work on either.
    Shape: (N, K) -> (N, K).
    """
    if scores.dim() == 2 and bool((scores >= 0).all()):
        sums = scores.sum(dim=1)
        if bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-3)):
            return scores.clamp_min(1e-30).log()
    return scores


class OnnxRuntimeModule(nn.Module):
    """An ONNX model run by onnxruntime: outputs only, no gradients (score-based black-box access).

    A graph with a fixed batch size gets chunks of that size (the last one padded).
    Shape: x (N, C, H, W) -> (N, K) logits (log-probabilities if the graph ends in a softmax).
    """

    def __init__(self, data: bytes) -> None:
        super().__init__()
        runtime = _runtime()
        options = runtime.SessionOptions()
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        options.inter_op_num_threads = 1
        try:
            self.session = runtime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelFileError(
                f"onnxruntime cannot load the model ({str(exc)[:200]}): re-export it"
            ) from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelFileError(
                f"the ONNX model has {len(inputs)} inputs: advrobust attacks models of one image input"
            )
        self.input_name = inputs[0].name
        dims = inputs[0].shape
        self.batch = dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else None
        self.input_shape = (
            tuple(int(d) for d in dims[1:])
            if len(dims) == 4 and all(isinstance(d, int) for d in dims[1:])
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        array = x.detach().to("cpu", torch.float32).numpy()
        step = self.batch or max(1, array.shape[0])
        outs = []
        for start in range(0, array.shape[0], step):
            chunk = array[start : start + step]
            k = chunk.shape[0]
            if self.batch is not None and k < self.batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - k, axis=0)])
            outs.append(self.session.run(None, {self.input_name: chunk})[0][:k])
        scores = torch.from_numpy(np.concatenate(outs)).to(x.device)
        return scores_as_logits(scores)


def _parity(converted: nn.Module, runtime: OnnxRuntimeModule, inputs: Tensor) -> tuple[float, float]:
    """(max |converted - onnxruntime|, max |onnxruntime|) over ``inputs``."""
    with torch.no_grad():
        ours = converted(inputs).float()
        theirs = runtime(inputs).float()
    if ours.shape != theirs.shape:
        return float("inf"), float(theirs.abs().max())
    return float((ours - theirs).abs().max()), float(theirs.abs().max())


def load_onnx(
    path: Path, *, access: Access, input_shape: tuple[int, ...] | None, probe: Tensor | None
) -> tuple[nn.Module, bytes, dict[str, Any]]:
    """The ONNX model at ``path`` for ``access``: onnxruntime (score, decision) or a torch conversion
    whose outputs match onnxruntime's on random inputs and ``probe`` (white-box), else a refusal.

    Returns (module, file bytes, info for the provenance: parity numbers, input shape when the graph has one).
    """
    from advrobust.models.external import PARITY_ATOL, PARITY_RTOL

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"cannot read {path} ({exc.strerror}): check the path") from None
    runtime = OnnxRuntimeModule(data)
    shape = input_shape or runtime.input_shape
    info: dict[str, Any] = {"runtime": "onnxruntime"}
    if runtime.input_shape is not None:
        info["input_shape"] = runtime.input_shape
    if access != "white-box":
        return runtime, data, info
    try:
        import onnx
    except ImportError:
        raise ConfigError(f"white-box ONNX needs the onnx package: {_EXTRA}") from None
    from advrobust.models.onnx_convert import convert

    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:
        raise ModelFileError(f"{path} is not a valid ONNX file ({str(exc)[:200]}): re-export it") from None
    converted = convert(proto)
    if shape is None:
        raise ConfigError(f"the input shape of {path} is unknown: pass --input-shape C H W")
    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand(8, *shape, generator=generator)
    if probe is not None:
        inputs = torch.cat([inputs, probe.detach().to("cpu", torch.float32)[:64]])
    fix = "attack it as a black box with --access score, or export the PyTorch model with torch.export (.pt2)"
    try:
        diff, scale = _parity(converted.eval(), runtime, inputs)
    except Exception as exc:
        raise ModelFileError(
            f"the torch conversion of {path} fails to run ({type(exc).__name__}: {str(exc)[:160]}): {fix}"
        ) from None
    info["parity"] = {"max_abs_diff": diff, "max_abs_output": scale, "inputs": int(inputs.shape[0])}
    if not diff <= PARITY_ATOL + PARITY_RTOL * scale:
        raise ModelFileError(
            f"the torch conversion of {path} differs from onnxruntime by up to {diff:.3g} (outputs up to "
            f"{scale:.3g}): white-box attacks on it would attack another model; {fix}"
        )
    info["runtime"] = "torch (converted, checked against onnxruntime)"
    return converted, data, info
