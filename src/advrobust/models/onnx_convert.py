"""A small ONNX -> PyTorch converter for the operators of common image classifiers (differentiable).

onnx2torch would do this, but it imports torchvision, which has no build for every torch; the operators
below cover CNNs, ResNets and MLPs exported by ``torch.onnx.export``. A graph with any other operator is
refused with the list of what is missing; ``external.load_onnx`` also checks the converted model's outputs
against onnxruntime before a white-box attack may use it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.errors import ModelFileError

Attrs = dict[str, Any]
OpFn = Callable[[list[Tensor | None], Attrs], Tensor | list[Tensor]]


def _pads(attrs: Attrs, spatial: int) -> tuple[list[int], bool]:
    """ONNX pads (begin..., end...) as F.pad's (last dim first) list, and whether they are symmetric."""
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise NotImplementedError("auto_pad SAME_UPPER/SAME_LOWER")
    pads = list(attrs.get("pads", [0] * (2 * spatial)))
    begin, end = pads[:spatial], pads[spatial:]
    torch_pads: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        torch_pads += [b, e]
    return torch_pads, begin == end


def _conv(inputs: list[Tensor | None], attrs: Attrs) -> Tensor:
    x, w, b = _need(inputs[0]), _need(inputs[1]), inputs[2] if len(inputs) > 2 else None
    spatial = w.dim() - 2
    pads, symmetric = _pads(attrs, spatial)
    stride = attrs.get("strides", [1] * spatial)
    dilation = attrs.get("dilations", [1] * spatial)
    groups = int(attrs.get("group", 1))
    padding: Any = pads[::2][::-1] if symmetric else 0
    if not symmetric:
        x = F.pad(x, pads)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]
    out: Tensor = conv(x, w, b, stride, padding, dilation, groups)
    return out


def _pool(kind: str) -> OpFn:
    def op(inputs: list[Tensor | None], attrs: Attrs) -> Tensor:
        x = _need(inputs[0])
        kernel = list(attrs["kernel_shape"])
        spatial = len(kernel)
        pads, symmetric = _pads(attrs, spatial)
        stride = attrs.get("strides", [1] * spatial)
        ceil = bool(attrs.get("ceil_mode", 0))
        if spatial != 2:
            raise NotImplementedError(f"{kind} over {spatial} dimensions")
        if kind == "MaxPool":
            if not symmetric:
                x = F.pad(x, pads, value=float("-inf"))
            dilation = attrs.get("dilations", [1, 1])
            padding = pads[::2][::-1] if symmetric else 0
            return F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode=ceil)
        include_pad = bool(attrs.get("count_include_pad", 0))
        if not symmetric:
            raise NotImplementedError("AveragePool with asymmetric pads")
        return F.avg_pool2d(x, kernel, stride, pads[::2][::-1], ceil_mode=ceil, count_include_pad=include_pad)

    return op


def _gemm(inputs: list[Tensor | None], attrs: Attrs) -> Tensor:
    a, b, c = _need(inputs[0]), _need(inputs[1]), inputs[2] if len(inputs) > 2 else None
    if attrs.get("transA", 0):
        a = a.t()
    if attrs.get("transB", 0):
        b = b.t()
    out = float(attrs.get("alpha", 1.0)) * (a @ b)
    if c is not None:
        out = out + float(attrs.get("beta", 1.0)) * c
    return out


def _batch_norm(inputs: list[Tensor | None], attrs: Attrs) -> Tensor:
    x, scale, bias, mean, var = (_need(t) for t in inputs[:5])
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, float(attrs.get("epsilon", 1e-5)))


def _flatten(inputs: list[Tensor | None], attrs: Attrs) -> Tensor:
    x = _need(inputs[0])
    axis = int(attrs.get("axis", 1)) % max(x.dim(), 1)
    return x.reshape(int(torch.tensor(x.shape[:axis]).prod()), -1)


def _reshape(inputs: list[Tensor | None], attrs: Attrs) -> Tensor:
    x, shape = _need(inputs[0]), [int(s) for s in _need(inputs[1]).tolist()]
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _axes(inputs: list[Tensor | None], attrs: Attrs) -> list[int] | None:
    if len(inputs) > 1 and inputs[1] is not None:
        return [int(a) for a in inputs[1].tolist()]
    return list(attrs["axes"]) if "axes" in attrs else None


def _unsqueeze(inputs: list[Tensor | None], attrs: Attrs) -> Tensor:
    x = _need(inputs[0])
    axes = _axes(inputs, attrs) or []
    rank = x.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = x.unsqueeze(axis)
    return x


def _squeeze(inputs: list[Tensor | None], attrs: Attrs) -> Tensor:
    x = _need(inputs[0])
    axes = _axes(inputs, attrs)
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(a % x.dim() for a in axes))


def _reduce_mean(inputs: list[Tensor | None], attrs: Attrs) -> Tensor:
    x = _need(inputs[0])
    axes = _axes(inputs, attrs)
    keep = bool(attrs.get("keepdims", 1))
    if axes is None or not axes:
        return x.mean().reshape([1] * x.dim()) if keep else x.mean()
    return x.mean(dim=tuple(axes), keepdim=keep)


def _clip(inputs: list[Tensor | None], attrs: Attrs) -> Tensor:
    x = _need(inputs[0])
    low = inputs[1] if len(inputs) > 1 and inputs[1] is not None else attrs.get("min")
    high = inputs[2] if len(inputs) > 2 and inputs[2] is not None else attrs.get("max")
    low_v = float(low) if low is not None else None
    high_v = float(high) if high is not None else None
    return x.clamp(low_v, high_v)


def _gather(inputs: list[Tensor | None], attrs: Attrs) -> Tensor:
    x, index = _need(inputs[0]), _need(inputs[1]).long()
    axis = int(attrs.get("axis", 0)) % x.dim()
    index = torch.where(index < 0, index + x.shape[axis], index)
    return x.index_select(axis, index.flatten()).reshape(*x.shape[:axis], *index.shape, *x.shape[axis + 1 :])


def _pad(inputs: list[Tensor | None], attrs: Attrs) -> Tensor:
    x = _need(inputs[0])
    pads = [int(p) for p in (_need(inputs[1]).tolist() if len(inputs) > 1 else attrs["pads"])]
    value = float(inputs[2]) if len(inputs) > 2 and inputs[2] is not None else 0.0
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    rank = x.dim()
    torch_pads: list[int] = []
    for b, e in zip(reversed(pads[:rank]), reversed(pads[rank:]), strict=True):
        torch_pads += [b, e]
    while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]
    return (
        F.pad(x, torch_pads, mode=mode, value=value)
        if mode == "constant"
        else F.pad(x, torch_pads, mode=mode)
    )


def _constant(inputs: list[Tensor | None], attrs: Attrs) -> Tensor:
    if "value" not in attrs:
        raise NotImplementedError("Constant without a tensor value")
    value: Tensor = attrs["value"]
    return value


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    return lambda inputs, attrs: fn(_need(inputs[0]), _need(inputs[1]))


def _unary(fn: Callable[[Tensor], Tensor]) -> OpFn:
    return lambda inputs, attrs: fn(_need(inputs[0]))


def _softmax(log: bool) -> OpFn:
    def op(inputs: list[Tensor | None], attrs: Attrs) -> Tensor:
        x = _need(inputs[0])
        axis = int(attrs.get("axis", -1))
        return F.log_softmax(x, dim=axis) if log else F.softmax(x, dim=axis)

    return op


OPS: dict[str, OpFn] = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": _binary(torch.matmul),
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(torch.div),
    "Pow": _binary(torch.pow),
    "Relu": _unary(F.relu),
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "Neg": _unary(torch.neg),
    "Exp": _unary(torch.exp),
    "Log": _unary(torch.log),
    "Sqrt": _unary(torch.sqrt),
    "Erf": _unary(torch.erf),
    "Identity": _unary(lambda t: t),
    "Dropout": _unary(lambda t: t),
    "LeakyRelu": lambda inputs, attrs: F.leaky_relu(_need(inputs[0]), float(attrs.get("alpha", 0.01))),
    "Elu": lambda inputs, attrs: F.elu(_need(inputs[0]), float(attrs.get("alpha", 1.0))),
    "Softmax": _softmax(log=False),
    "LogSoftmax": _softmax(log=True),
    "MaxPool": _pool("MaxPool"),
    "AveragePool": _pool("AveragePool"),
    "GlobalAveragePool": _unary(lambda t: t.mean(dim=tuple(range(2, t.dim())), keepdim=True)),
    "GlobalMaxPool": _unary(lambda t: t.amax(dim=tuple(range(2, t.dim())), keepdim=True)),
    "BatchNormalization": _batch_norm,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": lambda inputs, attrs: _need(inputs[0]).permute(
        *attrs.get("perm", list(range(_need(inputs[0]).dim()))[::-1])
    ),
    "Concat": lambda inputs, attrs: torch.cat([_need(t) for t in inputs], dim=int(attrs["axis"])),
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "ReduceMean": _reduce_mean,
    "Clip": _clip,
    "Gather": _gather,
    "Shape": lambda inputs, attrs: torch.tensor(_need(inputs[0]).shape, dtype=torch.int64),
    "Cast": lambda inputs, attrs: _cast(_need(inputs[0]), int(attrs["to"])),
    "Pad": _pad,
    "Constant": _constant,
}


def _cast(t: Tensor, to: int) -> Tensor:
    # ONNX TensorProto data types: 1 float, 6 int32, 7 int64, 9 bool, 10 float16, 11 double.
    dtypes = {
        1: torch.float32,
        6: torch.int32,
        7: torch.int64,
        9: torch.bool,
        10: torch.float16,
        11: torch.float64,
    }
    if to not in dtypes:
        raise NotImplementedError(f"Cast to ONNX type {to}")
    return t.to(dtypes[to])


def _need(t: Tensor | None) -> Tensor:
    if t is None:
        raise NotImplementedError("a required input is missing")
    return t


def _attributes(node: Any) -> Attrs:
    import onnx.helper
    import onnx.numpy_helper

    out: Attrs = {}
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        if isinstance(value, onnx.TensorProto):
            value = torch.from_numpy(onnx.numpy_helper.to_array(value).copy())
        elif isinstance(value, list):
            value = list(value)
        out[attr.name] = value
    return out


class OnnxGraphModule(nn.Module):
    """An ONNX graph run with torch operations, so that gradients flow; initializers become buffers.

    Shape: the graph's single input (N, C, H, W) -> its first output (N, K).
    """

    def __init__(self, graph: Any) -> None:
        super().__init__()
        import onnx.numpy_helper

        self._names: dict[str, str] = {}
        for i, init in enumerate(graph.initializer):
            safe = f"c{i}_" + re.sub(r"\W", "_", init.name)[:60]
            self.register_buffer(safe, torch.from_numpy(onnx.numpy_helper.to_array(init).copy()))
            self._names[init.name] = safe
        initialized = set(self._names)
        inputs = [i.name for i in graph.input if i.name not in initialized]
        if len(inputs) != 1:
            raise ModelFileError(
                f"the ONNX graph has {len(inputs)} inputs {inputs}: advrobust attacks models of one image input"
            )
        self.input_name = inputs[0]
        self.output_name = graph.output[0].name
        self._nodes = [(n.op_type, list(n.input), list(n.output), _attributes(n)) for n in graph.node]

    def forward(self, x: Tensor) -> Tensor:
        values: dict[str, Tensor | None] = {"": None, self.input_name: x}
        for name, safe in self._names.items():
            values[name] = getattr(self, safe)
        for op_type, inputs, outputs, attrs in self._nodes:
            result = OPS[op_type]([values[i] for i in inputs], attrs)
            results = result if isinstance(result, list) else [result]
            for name, value in zip(outputs, results, strict=False):
                values[name] = value
        out = values[self.output_name]
        if out is None:
            raise ModelFileError("the ONNX graph did not produce its output: the file is malformed")
        return out


def unsupported_ops(graph: Any) -> list[str]:
    """The operator types of ``graph`` this converter does not know (sorted; empty when all convert)."""
    return sorted({n.op_type for n in graph.node if n.op_type not in OPS or n.domain not in ("", "ai.onnx")})


def convert(model: Any) -> OnnxGraphModule:
    """A differentiable torch module computing the ONNX ``model`` (an ``onnx.ModelProto``)."""
    missing = unsupported_ops(model.graph)
    if missing:
        raise ModelFileError(
            f"the ONNX model uses operators advrobust cannot convert ({', '.join(missing)}): attack it as a "
            "black box with --access score (or decision), or export the PyTorch model with torch.export (.pt2)"
        )
    return OnnxGraphModule(model.graph)
