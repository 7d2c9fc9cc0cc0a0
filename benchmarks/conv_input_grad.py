"""Gradient kernels of few-channel convolutions on CPU: oneDNN vs the alternatives ``advrobust.cpu_grad`` uses.

The measurements behind ``advrobust.cpu_grad``: for first-layer shapes of MNIST / CIFAR / ImageNet models,
at each ``--threads``,
- the input gradient (``convolution_backward`` with only the input asked for) with oneDNN and with oneDNN
  switched off (PyTorch's native kernel), then one attack step (forward and input gradient) of whole models
  with and without ``fast_input_gradients``;
- the weight and bias gradients (``convolution_backward`` with those asked for) with oneDNN and as one
  batched matrix product of the output gradients with the image patches, then one training step (forward and backward to the parameters) of whole models with and
  without ``fast_weight_gradients``.
Interleaved, minimum of ``--repeats`` timings.

Usage:
    python benchmarks/conv_input_grad.py --threads 1 --threads 2
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import advrobust
from advrobust.cpu_grad import fast_input_gradients, fast_weight_gradients

# (in, out, size, kernel, stride, padding, batch)
LAYERS = [
    (1, 16, 28, 4, 2, 1, 250),  # small-cnn (Wong et al.)
    (1, 32, 28, 5, 1, 2, 250),  # madry-cnn
    (3, 64, 32, 3, 1, 1, 64),  # preact-resnet18 on CIFAR
    (3, 16, 32, 3, 1, 1, 128),
    (4, 32, 32, 3, 1, 1, 128),
    (8, 32, 32, 3, 1, 1, 128),
    (16, 32, 14, 4, 2, 1, 250),  # small-cnn's second layer
    (3, 64, 224, 7, 2, 3, 8),  # ImageNet ResNet stem
]
MODELS = [("small-cnn", 1, 28, 250, 20), ("madry-cnn", 1, 28, 250, 4), ("preact-resnet18", 3, 32, 64, 2)]
# (name, channels, size, batch, calls per timing): training batches
TRAIN_MODELS = [("small-cnn", 1, 28, 100, 20), ("madry-cnn", 1, 28, 50, 4), ("madry-cnn", 1, 28, 250, 2)]


def best_ms(fn: Callable[[], object], n: int, repeats: int) -> float:
    for _ in range(2):
        fn()
    best = float("inf")
    for _ in range(repeats):
        tick = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - tick) / n * 1000)
    return best


def layer(cin: int, cout: int, size: int, k: int, s: int, p: int, bs: int, repeats: int) -> None:
    x = torch.rand(bs, cin, size, size)
    w = torch.randn(cout, cin, k, k) * 0.1
    g = torch.randn_like(F.conv2d(x, w, stride=s, padding=p))

    def grad() -> object:
        mask = [True, False, False]
        return torch.ops.aten.convolution_backward(
            g, x, w, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, mask
        )

    onednn = best_ms(grad, 10, repeats)
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
    try:
        native = best_ms(grad, 10, repeats)
    finally:
        torch.backends.mkldnn.enabled = True  # type: ignore[assignment]
    print(
        f"  {cin:>2} -> {cout:<3} {size}x{size} k{k} s{s} batch {bs:>3}: oneDNN {onednn:7.2f} ms, "
        f"native {native:7.2f} ms, oneDNN / native {onednn / native:.2f}"
    )


def step(name: str, channels: int, size: int, bs: int, n: int, repeats: int) -> None:
    torch.manual_seed(0)
    model = advrobust.create_model(name, num_classes=10, in_channels=channels).eval()
    x, y = torch.rand(bs, channels, size, size), torch.randint(0, 10, (bs,))

    def one() -> object:
        xx = x.detach().requires_grad_(True)
        return torch.autograd.grad(F.cross_entropy(model(xx), y), xx)

    default = best_ms(one, n, repeats)
    with fast_input_gradients(model):
        fast = best_ms(one, n, repeats)
    print(
        f"  {name} batch {bs}: default {default:.2f} ms, fast_input_gradients {fast:.2f} ms, "
        f"speed-up {default / fast:.2f}x"
    )


def weight_layer(cin: int, cout: int, size: int, k: int, s: int, p: int, bs: int, repeats: int) -> None:
    x = torch.rand(bs, cin, size, size)
    w = torch.randn(cout, cin, k, k) * 0.1
    g = torch.randn_like(F.conv2d(x, w, stride=s, padding=p))

    def onednn() -> object:
        mask = [False, True, True]
        return torch.ops.aten.convolution_backward(
            g, x, w, [cout], [s, s], [p, p], [1, 1], False, [0, 0], 1, mask
        )

    def as_product() -> object:
        # cpu_grad's formula for one input channel, written for any number of them.
        padded = F.pad(x, (p, p, p, p))
        patches = padded.unfold(2, k, s).unfold(3, k, s)[:, :, : g.shape[2], : g.shape[3]]
        patches = patches.permute(0, 1, 4, 5, 2, 3).reshape(bs, cin * k * k, -1)
        per_image = torch.bmm(g.reshape(bs, cout, -1), patches.transpose(1, 2))
        return per_image.sum(dim=0).view(cout, cin, k, k), g.sum(dim=(0, 2, 3))

    reference = onednn()[1]  # type: ignore[index]
    error = float((as_product()[0] - reference).abs().max() / reference.abs().max())  # type: ignore[index,operator]
    a, b = best_ms(onednn, 10, repeats), best_ms(as_product, 10, repeats)
    print(
        f"  {cin:>2} -> {cout:<3} {size}x{size} k{k} s{s} batch {bs:>3}: oneDNN {a:7.2f} ms, "
        f"as a product {b:7.2f} ms, oneDNN / product {a / b:.2f} (max relative difference {error:.0e})"
    )


def train_step(name: str, channels: int, size: int, bs: int, n: int, repeats: int) -> None:
    torch.manual_seed(0)
    model = advrobust.create_model(name, num_classes=10, in_channels=channels).train()
    x, y = torch.rand(bs, channels, size, size), torch.randint(0, 10, (bs,))

    def one() -> object:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        return None

    # Interleaved: the two settings alternate, `repeats` times each, so a slow spell of the machine hits both.
    default = fast = float("inf")
    for _ in range(repeats):
        default = min(default, best_ms(one, n, 1))
        with fast_weight_gradients(model):
            fast = min(fast, best_ms(one, n, 1))
    print(
        f"  {name} batch {bs}: default {default:.2f} ms, fast_weight_gradients {fast:.2f} ms, "
        f"speed-up {default / fast:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, action="append", help="torch threads (repeatable; default 1)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}")
    for threads in args.threads or [1]:
        torch.set_num_threads(threads)
        print(f"threads {threads}: input gradient of one convolution")
        for shape in LAYERS:
            layer(*shape, repeats=args.repeats)
        print(f"threads {threads}: one attack step (forward + input gradient)")
        for model in MODELS:
            step(*model, repeats=args.repeats)
        print(f"threads {threads}: weight and bias gradients of one convolution")
        for shape in LAYERS:
            weight_layer(*shape, repeats=args.repeats)
        print(f"threads {threads}: one training step (forward + parameter gradients)")
        for model in TRAIN_MODELS:
            train_step(*model, repeats=args.repeats)


if __name__ == "__main__":
    main()
