"""The model contract: float inputs in bounds (N, C, H, W) -> logits (N, K); checked once, up front."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from advrobust.errors import InputError

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

#: What an attacker may see of the model: gradients (white-box), output scores, or only the predicted label.
Access = Literal["white-box", "score", "decision"]
ACCESS_LEVELS: tuple[str, ...] = get_args(Access)


def check_inputs(x: Tensor, bounds: tuple[float, float] = (0.0, 1.0)) -> None:
    """Raise InputError unless x is a finite float tensor of shape (N, C, H, W) inside ``bounds``."""
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
    if not bool(torch.isfinite(x).all()):
        raise InputError("inputs contain NaN or infinite values: clean or drop those samples first")
    low, high = bounds
    lo_seen, hi_seen = float(x.min()), float(x.max())
    if hi_seen > high + 1e-6 or lo_seen < low - 1e-6:
        hint = " — they look like 0-255 pixels: divide by 255" if hi_seen > 2 * max(high, 1.0) else ""
        raise InputError(
            f"input values span [{lo_seen:g}, {hi_seen:g}] but the threat model's bounds are [{low:g}, {high:g}]"
            f"{hint}; or move normalization inside the model (advrobust.models.Normalize) and keep inputs in bounds"
        )


def check_labels(
    y: Tensor, num_samples: int, num_classes: int | None = None, *, what: str = "labels"
) -> None:
    """Raise InputError unless y is an integer tensor of shape (N,) with values in [0, K)."""
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
    if num_classes is not None and y.numel() > 0:
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= num_classes:
            raise InputError(
                f"{what} span [{low}, {high}] but the model has {num_classes} classes: labels must lie in [0, {num_classes})"
            )


def check_outputs(logits: Tensor, num_samples: int) -> None:
    """Raise InputError unless the model's outputs look like finite logits of shape (N, K)."""
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
    if not bool(torch.isfinite(logits).all()):
        raise InputError("the model returned NaN or infinite outputs: check the model and its weights")
    detached = logits.detach().float()
    is_prob = bool((detached >= 0).all()) and bool(
        torch.allclose(detached.sum(dim=1), torch.ones(num_samples, device=detached.device), atol=1e-3)
    )
    if is_prob:
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
