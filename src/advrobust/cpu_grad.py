"""Faster gradients through few-channel convolutions on one or two CPU threads.

Attacks ask for the gradient of the loss with respect to the image, so they run the backward pass of the
first convolution, which training never does (the data needs no gradient). On CPUs PyTorch computes it with
oneDNN, whose backward-data kernel is slow when a convolution has one input channel: measured on one thread
(torch 2.13, two AMD EPYC CPUs, with and without AVX-512, float32), 1 -> 16 channels 4x4 stride 2 on 250
MNIST images 3.4-4.7x the time of PyTorch's native kernel, 1 -> 32 5x5 2.1-4.5x; for three or four input
channels it depends on the shape and the CPU (0.5-2.7x: the CIFAR and ImageNet stems win, 3 -> 16 3x3 loses
on both CPUs), and from 8 input channels up oneDNN is faster (``benchmarks/conv_input_grad.py``,
``benchmarks/RESULTS.md``). The native kernel hardly gains from a second thread while oneDNN nearly
doubles: on two threads the native kernel still wins for one input channel on both CPUs (1.8-2.6x for
1 -> 16, 1.1-2.3x for 1 -> 32), while for three or four channels it wins for some shapes and loses for
others. So the switch applies to up to ``MAX_CHANNELS`` input channels on one thread, to one input channel
on two, and never on more threads.

``fast_input_gradients(model)`` is used where only input gradients are taken (attacks, the inner
maximisation of adversarial training). Inside it, in the calling thread, every plain ``nn.Conv2d`` of
``model`` with at most ``MAX_CHANNELS`` input channels (no groups, no dilation, zero padding) computes its
forward as usual and, where the thread count above allows, its input gradient with the native kernel and no
gradient for its weights (nothing there asks for one).

Training's own backward asks for the weight gradient of the first convolution, and oneDNN's backward-weights
kernel is slow for one input channel too (1 -> 16 4x4 stride 2 on 100 images: 2.0-2.2 ms, four times the
forward). Written as batched matrix products of the output gradients with the image patches the kernel saw
(the patches of at most ``PATCH_FLOATS`` floats at a time), it took 1.4-4.7x less time on one thread and
2.5-4.5x less on two, for every one-channel shape measured (16-64 output channels, kernels 3-7, 28x28 to
224x224, batches 8-512); with 3 to 8 input channels the same product was slower in 9 of 12 cases
(0.36-1.44x, ``benchmarks/conv_input_grad.py``). ``fast_weight_gradients(model)``, used by the trainer
around each training forward, gives one-input-channel convolutions that weight gradient, and their input
gradient (Free-AT asks for both) from the native kernel, on one or two threads (a training step of
small-cnn on 100 MNIST images 1.07-1.13x faster, of madry-cnn 0.83-1.17x, inside this machine's noise; more
threads are not measured, so left to oneDNN). Forward-mode AD and ``torch.func`` get the plain convolution.

Other threads using the same model meanwhile, and copies of it, see plain convolutions. The model's
modules get their own class back on exit.
"""

from __future__ import annotations

import contextlib
import copyreg
import threading
from collections.abc import Iterator
from typing import Any, SupportsIndex

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import forward_ad
from torch.autograd.function import once_differentiable
from torch.nn.grad import conv2d_input

MAX_CHANNELS = 4
"""Convolutions with at most this many input channels take the native input-gradient kernel."""

WEIGHT_GRAD_MAX_THREADS = 2
"""Most threads on which one-input-channel convolutions take the faster weight gradient in training."""

_local = threading.local()
_NATIVE = getattr(torch.ops.aten, "_slow_conv2d_backward", None)


def _depth(mode: str) -> int:
    """How many ``mode`` ("input" / "weight") blocks are open in this thread."""
    return int(getattr(_local, mode, 0))


class _Conv(torch.autograd.Function):
    """conv2d (groups 1, dilation 1) that saves what the backward passes below need."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int], padding: list[int]
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, bias, stride, padding)


def _native_input_grad(ctx: Any, grad: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """The input gradient of the saved convolution from PyTorch's native kernel."""
    assert _NATIVE is not None  # checked before the Functions are used
    kernel = list(weight.shape[2:])
    mask = [True, False, False]
    grad_x: Tensor = _NATIVE(
        grad.contiguous(), x.contiguous(), weight.contiguous(), kernel, ctx.stride, ctx.padding, mask
    )[0]
    return grad_x


class _NativeInputGradConv(_Conv):
    """conv2d (groups 1, dilation 1) whose backward returns the input gradient only, from the native kernel."""

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        x, weight = ctx.saved_tensors
        return _native_input_grad(ctx, grad, x, weight), None, None, None, None


#: Most floats the image patches of one chunk of the batch may take in ``_one_channel_weight_grad`` (64 MiB).
PATCH_FLOATS = 1 << 24


def _one_channel_weight_grad(
    x: Tensor, grad: Tensor, kernel: list[int], stride: list[int], padding: list[int]
) -> Tensor:
    """The weight gradient of a one-input-channel conv2d as batched matrix products of the output gradients
    with the image patches the kernel saw, over chunks of the batch whose patches fit ``PATCH_FLOATS``.

    Shape: x (N, 1, H, W), grad (N, O, H', W') -> (O, 1, kh, kw).
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, o, ho, wo = grad.shape
    padded = F.pad(x[:, 0], (pw, pw, ph, ph))
    # (N, H', W', kh, kw) views of the padded images; rows / columns past the last window are never read.
    windows = padded.unfold(1, kh, sh).unfold(2, kw, sw)[:, :ho, :wo]
    chunk = max(1, PATCH_FLOATS // max(1, kh * kw * ho * wo))
    total = grad.new_zeros(o, kh * kw)
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        patches = windows[rows].permute(0, 3, 4, 1, 2).reshape(-1, kh * kw, ho * wo)
        per_image = torch.bmm(grad[rows].reshape(-1, o, ho * wo), patches.transpose(1, 2))
        total += per_image.sum(dim=0)
    return total.view(o, 1, kh, kw)


class _OneChannelConv(_Conv):
    """conv2d (one input channel, groups 1, dilation 1) whose backward takes the weight gradient as a
    matrix product (``_one_channel_weight_grad``) and the input gradient from the native kernel."""

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            if torch.is_grad_enabled():  # a double backward is asked for: the differentiable formula
                grad_x = conv2d_input(x.shape, weight, grad, ctx.stride, ctx.padding)  # type: ignore[no-untyped-call]
            else:
                grad_x = _native_input_grad(ctx, grad, x, weight)
        if ctx.needs_input_grad[1]:
            grad_w = _one_channel_weight_grad(x, grad, list(weight.shape[2:]), ctx.stride, ctx.padding)
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


def _plain_autograd(input: Tensor) -> bool:
    """Whether only reverse-mode autograd sees this forward: the Functions here have no forward-mode (jvp)
    or ``torch.func`` rule, so under those the plain convolution runs."""
    return forward_ad._current_level < 0 and not torch._C._functorch.is_functorch_wrapped_tensor(input)


class _FastConv2d(nn.Conv2d):
    """The class an eligible ``nn.Conv2d`` wears inside ``fast_input_gradients`` or
    ``fast_weight_gradients``: the plain convolution except in a thread where one of the blocks is active."""

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        # Copies and pickles made inside a block are plain convolutions, not this private class.
        reduced = super().__reduce_ex__(protocol)
        if isinstance(reduced, tuple) and len(reduced) > 2:
            # (how to make an empty object, state, ...): an empty nn.Conv2d instead, the same state.
            return (copyreg._reconstructor, (nn.Conv2d, object, None), *reduced[2:])  # type: ignore[attr-defined]
        return reduced

    def forward(self, input: Tensor) -> Tensor:
        if not (
            input.dim() == 4
            and input.device.type == "cpu"
            and input.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
            and _plain_autograd(input)
        ):
            return super().forward(input)
        stride, padding = list(self.stride), list(self.padding)
        out: Tensor
        if _depth("input") and input.requires_grad and _native_pays(self.in_channels):
            bias = None if self.bias is None else self.bias.detach()
            out = _NativeInputGradConv.apply(input, self.weight.detach(), bias, stride, padding)  # type: ignore[no-untyped-call]
            return out
        if (
            _depth("weight")
            and self.in_channels == 1
            and self.weight.requires_grad
            and torch.get_num_threads() <= WEIGHT_GRAD_MAX_THREADS
        ):
            out = _OneChannelConv.apply(input, self.weight, self.bias, stride, padding)  # type: ignore[no-untyped-call]
            return out
        return super().forward(input)


#: Most input channels for which the native kernel pays, by thread count (none on more threads).
_NATIVE_CHANNELS_BY_THREADS = {1: MAX_CHANNELS, 2: 1}


def _native_pays(in_channels: int) -> bool:
    """Whether the native input-gradient kernel is the faster one at the current thread count."""
    return in_channels <= _NATIVE_CHANNELS_BY_THREADS.get(torch.get_num_threads(), 0)


def _eligible(module: nn.Module) -> bool:
    return (
        type(module) is nn.Conv2d
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
        and module.groups == 1
        and tuple(module.dilation) == (1, 1)
        and module.in_channels <= MAX_CHANNELS
        and module.weight.device.type == "cpu"  # on a GPU the class stays: no per-forward checks there
    )


@contextlib.contextmanager
def _swapped(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    modules = list(model.modules())
    if _NATIVE is None or any(type(m).__name__ == "OptimizedModule" for m in modules):
        yield model
        return
    # Only plain Conv2d: those an enclosing block already swapped stay swapped until it ends.
    swapped = [m for m in modules if _eligible(m)]
    for conv in swapped:
        conv.__class__ = _FastConv2d
    setattr(_local, mode, _depth(mode) + 1)
    try:
        yield model
    finally:
        setattr(_local, mode, _depth(mode) - 1)
        for conv in swapped:
            conv.__class__ = nn.Conv2d


@contextlib.contextmanager
def fast_input_gradients(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, in this thread, few-channel convolutions of ``model`` take the faster
    input-gradient kernel on one or two CPU threads (see the module docstring); their weights get no
    gradient.

    Nested uses are fine. A compiled model (``torch.compile``) is left as it is.
    """
    with _swapped(model, "input"):
        yield model


@contextlib.contextmanager
def fast_weight_gradients(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, in this thread, one-input-channel convolutions of ``model`` whose weights need a
    gradient take it as a matrix product (see the module docstring), on one or two CPU threads; the gradients
    are the usual ones up to float rounding. Inside a ``fast_input_gradients`` block, that one applies.

    Nested uses are fine. A compiled model (``torch.compile``) is left as it is.
    """
    with _swapped(model, "weight"):
        yield model
