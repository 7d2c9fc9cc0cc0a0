"""Faster forward passes for evaluation: bf16 autocast, channels_last and ``torch.compile``.

Attacks keep their maths in float32: the wrapper returns float32 logits, so losses, input gradients,
steps and projections never run in bf16. Meant for CUDA (autocast in bf16 also runs on CPUs, where it
is rarely faster). What the wrapped model declares (``randomized``, ``differentiable``, ``bpda_forward``)
stays visible, so adaptive attacks still see it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from advrobust.errors import ConfigError


class Accelerated(nn.Module):
    """Run ``model`` under bf16 autocast and/or on channels_last inputs; return float32 logits.

    Shape: x (N, C, H, W) -> logits (N, K) float32.
    """

    def __init__(self, model: nn.Module, *, amp: bool, channels_last: bool, device_type: str) -> None:
        super().__init__()
        self.model = model
        self.amp, self.channels_last, self.device_type = amp, channels_last, device_type

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.amp):
            out: Tensor = self.model(x)
        return out.float()

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(super().__getattr__("model"), name)


def accelerate(
    model: nn.Module,
    device: torch.device | str,
    *,
    amp: bool = False,
    channels_last: bool = False,
    compile: bool = False,
    compile_backend: str = "inductor",
) -> nn.Module:
    """``model`` made faster for attacks on ``device``; the model itself when nothing is asked.

    ``compile`` wraps it in ``torch.compile`` (dynamic shapes: a cascade attacks ever smaller batches);
    the first batches pay the compilation.
    """
    device = torch.device(device)
    if (amp or channels_last) and device.type not in ("cuda", "cpu"):
        raise ConfigError(f"--amp and --channels-last run on cuda or cpu, not {device.type}: drop them")
    out = model
    if channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if amp or channels_last:
        out = Accelerated(model, amp=amp, channels_last=channels_last, device_type=device.type)
    if compile:
        compiled: nn.Module = torch.compile(out, backend=compile_backend, dynamic=True)  # type: ignore[assignment]
        out = compiled
    return out
