"""The model contract: float inputs in bounds (N, C, H, W) -> logits (N, K); checked once, up front."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from advrobust.errors import ConfigError, InputError

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

#: What an attacker may see of the model: gradients (white-box), output scores, or only the predicted label.
Access = Literal["white-box", "score", "decision"]
ACCESS_LEVELS: tuple[str, ...] = get_args(Access)


def check_inputs(x: Tensor, bounds: tuple[float, float] = (0.0, 1.0)) -> None:
    """Raise InputError unless x is a finite float tensor of shape (N, C, H, W) inside ``bounds``."""
    _check_input_layout(x)
    _raise_for_inputs(_input_stats(x).tolist(), bounds)


def check_labels(
    y: Tensor, num_samples: int, num_classes: int | None = None, *, what: str = "labels"
) -> None:
    """Raise InputError unless y is an integer tensor of shape (N,) with values in [0, K)."""
    _check_label_layout(y, num_samples, what)
    if num_classes is not None and y.numel() > 0:
        _raise_for_labels(_label_stats(y).tolist(), num_classes, what)


def check_outputs(logits: Tensor, num_samples: int) -> None:
    """Raise InputError unless the model's outputs look like finite logits of shape (N, K)."""
    _check_output_layout(logits, num_samples)
    _raise_for_outputs(_output_stats(logits).tolist())


def check_call(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    targets: Tensor | None,
    bounds: tuple[float, float],
    probe: int,
) -> None:
    """``check_inputs``, ``check_labels`` (and the targets'), and ``check_outputs`` on the model's outputs for
    the first ``probe`` samples, with one read of the device's results for all of them: on a GPU each read
    waits for the queued work, which costs a one-step attack on a small model as much as the attack."""
    _check_input_layout(x)
    for labels, what in ((y, "labels"), (targets, "targets")):
        if labels is not None:
            _check_label_layout(labels, x.shape[0], what)
            if labels.device != x.device:
                raise InputError(
                    f"{what} are on {labels.device} and the inputs on {x.device}: move them with .to(x.device)"
                )
    sample = x[:probe]
    try:
        with torch.no_grad(), eval_mode(model):
            logits = model(sample)
    except Exception:
        # The model ran before the values were checked (to read the device once): if it fails, the inputs'
        # own error, if they have one, is the one to report.
        _raise_for_inputs(_input_stats(x).tolist(), bounds)
        raise
    _check_output_layout(logits, sample.shape[0])
    parts = [_input_stats(x), _label_stats(y), _output_stats(logits)]
    if targets is not None:
        parts += [_label_stats(targets), (targets == y).any().double().reshape(1)]
    values = torch.cat(parts).tolist()  # the one host read
    _raise_for_inputs(values[0:2], bounds)
    _raise_for_outputs(values[4:6])
    num_classes = logits.shape[1]
    _raise_for_labels(values[2:4], num_classes, "labels")
    if targets is not None:
        _raise_for_labels(values[6:8], num_classes, "targets")
        if values[8]:
            raise ConfigError("some targets equal the true labels: pick target classes different from y")


def _check_input_layout(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise InputError(
            f"inputs must be a torch.Tensor, got {type(x).__name__}: convert with torch.as_tensor"
        )
    if x.dtype == torch.uint8:
        raise InputError(
            "inputs are uint8 (0-255): convert them with x.float() / 255 to get floats in [0, 1]"
        )
    if x.dtype not in FLOAT_DTYPES:
        raise InputError(f"inputs have dtype {x.dtype}: pass floating-point images, e.g. x.float()")
    if x.dim() != 4:
        hint = " (add the channel axis with x.unsqueeze(1))" if x.dim() == 3 else ""
        raise InputError(f"inputs have shape {tuple(x.shape)}: expected (N, C, H, W){hint}")
    if x.shape[0] == 0:
        raise InputError("inputs are an empty batch: pass at least one sample")


def _input_stats(x: Tensor) -> Tensor:
    """(2,) float64 on x's device: the smallest and largest value (NaN where x holds a NaN)."""
    low, high = torch.aminmax(x.detach())
    return torch.stack([low, high]).double()


def _raise_for_inputs(stats: list[float], bounds: tuple[float, float]) -> None:
    lo_seen, hi_seen = stats
    if not (math.isfinite(lo_seen) and math.isfinite(hi_seen)):
        raise InputError("inputs contain NaN or infinite values: clean or drop those samples first")
    low, high = bounds
    if hi_seen > high + 1e-6 or lo_seen < low - 1e-6:
        hint = " — they look like 0-255 pixels: divide by 255" if hi_seen > 2 * max(high, 1.0) else ""
        raise InputError(
            f"input values span [{lo_seen:g}, {hi_seen:g}] but the threat model's bounds are [{low:g}, {high:g}]"
            f"{hint}; or move normalization inside the model (advrobust.models.Normalize) and keep inputs in bounds"
        )


def _check_label_layout(y: Tensor, num_samples: int, what: str) -> None:
    if not isinstance(y, Tensor):
        raise InputError(
            f"{what} must be a torch.Tensor, got {type(y).__name__}: convert with torch.as_tensor"
        )
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise InputError(f"{what} have dtype {y.dtype}: pass class indices as int64 (y.long())")
    if y.dim() != 1 or y.shape[0] != num_samples:
        hint = " (one-hot? use y.argmax(dim=1))" if y.dim() == 2 else ""
        raise InputError(
            f"{what} have shape {tuple(y.shape)}: expected ({num_samples},), one class index per input{hint}"
        )


def _label_stats(y: Tensor) -> Tensor:
    """(2,) float64 on y's device: the smallest and largest label (y non-empty)."""
    low, high = torch.aminmax(y)
    return torch.stack([low, high]).double()


def _raise_for_labels(stats: list[float], num_classes: int, what: str) -> None:
    low, high = int(stats[0]), int(stats[1])
    if low < 0 or high >= num_classes:
        raise InputError(
            f"{what} span [{low}, {high}] but the model has {num_classes} classes: labels must lie in [0, {num_classes})"
        )


def _check_output_layout(logits: Tensor, num_samples: int) -> None:
    if not isinstance(logits, Tensor):
        raise InputError(
            f"the model returned {type(logits).__name__}, not a tensor: make forward() return logits (N, K)"
        )
    if logits.dim() != 2 or logits.shape[0] != num_samples:
        raise InputError(
            f"the model returned shape {tuple(logits.shape)}: expected logits of shape ({num_samples}, K)"
        )
    if logits.shape[1] < 2:
        raise InputError("the model returns a single score per input: return one logit per class (K >= 2)")


def _output_stats(logits: Tensor) -> Tensor:
    """(2,) float64 on the logits' device: whether all are finite, and whether they look like probabilities
    (all >= 0, each row summing to 1 within 1e-3)."""
    finite = torch.isfinite(logits.detach()).all()  # before float32, which overflows past 3.4e38
    detached = logits.detach().float()
    sums_to_one = ((detached.sum(dim=1) - 1).abs() <= 1e-3 + 1e-5).all()
    return torch.stack([finite, (detached >= 0).all() & sums_to_one]).double()


def _raise_for_outputs(stats: list[float]) -> None:
    if not stats[0]:
        raise InputError("the model returned NaN or infinite outputs: check the model and its weights")
    if stats[1]:
        raise InputError(
            "the model returns probabilities (outputs are >= 0 and sum to 1): remove the final softmax and "
            "return logits, or gradients vanish and attacks under-report"
        )


def check_model_io(
    model: nn.Module, x: Tensor, y: Tensor, bounds: tuple[float, float] = (0.0, 1.0)
) -> Tensor:
    """Check inputs, labels and outputs together (one forward pass without gradients); return the logits."""
    check_inputs(x, bounds)
    check_labels(y, x.shape[0])
    with torch.no_grad(), eval_mode(model):
        logits: Tensor = model(x)
    check_outputs(logits, x.shape[0])
    check_labels(y, x.shape[0], logits.shape[1])
    return logits


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode for the duration, then restore each one's own mode."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
