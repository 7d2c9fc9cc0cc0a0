"""Input transformations that try to wash out a perturbation before the model sees it.

Each transform is an ``nn.Module`` on images in [0, 1] that declares ``differentiable`` (does autograd give a
useful gradient?) and ``randomized`` (does each call draw new randomness?), and carries ``surrogate(x)``, the
differentiable stand-in BPDA uses in the backward pass (identity by default: straight-through).
Most of these defenses only look robust because they break gradients (Athalye, Carlini & Wagner, 2018,
arXiv:1802.00420): evaluate them with ``BPDA`` / ``EOT`` or the ``adaptive`` suite.

Randomized transforms draw from their ``generator`` when one is set (``InputTransformDefense.manual_seed``
sets them all), otherwise from torch's global RNG.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from advrobust.errors import ConfigError

_TRANSFORMS: dict[str, type[Transform]] = {}
T = TypeVar("T", bound="type[Transform]")


def random_normal(shape: Sequence[int], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise of ``shape`` on ``like``'s device and dtype, drawn from ``generator`` if given.

    The generator may live on another device than ``like`` (a CPU generator for CUDA inputs).
    """
    if generator is None:
        return torch.randn(tuple(shape), device=like.device, dtype=like.dtype)
    noise = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=like.dtype)
    return noise.to(like.device)


def random_uniform(shape: Sequence[int], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Uniform [0, 1) noise, as ``random_normal``."""
    if generator is None:
        return torch.rand(tuple(shape), device=like.device, dtype=like.dtype)
    noise = torch.rand(tuple(shape), generator=generator, device=generator.device, dtype=like.dtype)
    return noise.to(like.device)


class Transform(nn.Module):
    """Base class: an image transformation that keeps shape and the [0, 1] range.

    Subclasses set ``differentiable`` / ``randomized`` and override ``forward`` (and ``surrogate`` when
    identity is a poor stand-in). Hyperparameters are keyword-only and listed by ``params()``.
    Shape: x (N, C, H, W) in [0, 1] -> like x, in [0, 1].
    """

    name: ClassVar[str] = "transform"
    #: The main hyperparameter, set by a spec such as ``jpeg:75`` (None: the transform has none).
    primary: ClassVar[str | None] = None
    differentiable: bool = True
    randomized: bool = False

    def __init__(self, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.generator = generator

    def surrogate(self, x: Tensor) -> Tensor:
        """A differentiable approximation of ``forward`` for BPDA's backward pass (identity here)."""
        return x

    def params(self) -> dict[str, Any]:
        """Hyperparameters as JSON types (the model card stores them)."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.params()}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params().items())


def register_transform(name: str) -> Callable[[T], T]:
    """Register a Transform subclass under ``name`` (used by ``advrobust defend --transform`` and cards)."""

    def decorate(cls: T) -> T:
        if name in _TRANSFORMS:
            raise ConfigError(f"a transform named {name!r} is already registered: choose another name")
        cls.name = name
        _TRANSFORMS[name] = cls
        return cls

    return decorate


def list_transforms() -> list[str]:
    """Names of the registered transforms."""
    return sorted(_TRANSFORMS)


def create_transform(name: str, **params: Any) -> Transform:
    """Build a registered transform from keyword hyperparameters."""
    try:
        cls = _TRANSFORMS[name]
    except KeyError:
        raise ConfigError(
            f"unknown transform {name!r}: choose one of {', '.join(list_transforms())}"
        ) from None
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"transform {name!r}: {exc}") from None


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not a number") from None


def parse_transform(spec: str) -> Transform:
    """A transform from a spec: ``name``, ``name:value`` (its main option) or ``name:key=value,key=value``.

    Examples: ``jpeg:75``, ``bitdepth:4``, ``blur:sigma=1.0,kernel_size=5``, ``noise:0.1``, ``resize-pad``.
    """
    name, _, rest = spec.strip().partition(":")
    params: dict[str, Any] = {}
    if rest:
        cls = _TRANSFORMS.get(name)
        try:
            if "=" not in rest:
                if cls is None or cls.primary is None:
                    raise ConfigError(f"{name!r} takes no value: write {name}:key=value")
                params[cls.primary] = _number(rest)
            else:
                for item in rest.split(","):
                    key, _, value = item.partition("=")
                    params[key.strip().replace("-", "_")] = _number(value.strip())
        except ConfigError as exc:
            raise ConfigError(
                f"bad transform spec {spec!r} ({exc}): write e.g. jpeg:75 or blur:sigma=1.0"
            ) from None
    return create_transform(name, **params)


def _check_images(x: Tensor, what: str) -> None:
    if x.dim() != 4:
        raise ConfigError(f"{what} takes images of shape (N, C, H, W), got {tuple(x.shape)}")


@register_transform("jpeg")
class JPEG(Transform):
    """JPEG compression at ``quality`` with the real codec (Pillow), as in Dziugaite et al. 2016
    (arXiv:1608.00853) and Guo et al. 2018 (arXiv:1711.00117).

    Not differentiable: rounding to 8 bits makes it piecewise constant, and autograd reports that true,
    useless gradient, zero. BPDA's surrogate is the identity, as in Athalye et al.: on MNIST it beat a
    differentiable JPEG (block DCT, soft-rounded quantisation; 48% vs 52% under BPDA-PGD). Images are
    rounded to 8 bits and go through the codec on the CPU: grayscale batches as one mosaic of tiles padded to
    whole 8x8 blocks the way the encoder pads a lone image (edge pixels repeated), which decodes to exactly
    the pixels of coding each image alone, 10-15x faster on MNIST; RGB images one at a time (4:2:0 chroma
    would mix neighbouring tiles). Grayscale (C=1) and RGB (C=3) only.
    Shape: x (N, 1 or 3, H, W) in [0, 1] -> like x, multiples of 1/255.
    """

    primary: ClassVar[str | None] = "quality"
    differentiable = False
    #: Largest side of a grayscale mosaic (JPEG allows 65,535).
    MOSAIC_SIDE: ClassVar[int] = 65_000

    def __init__(self, *, quality: int = 75) -> None:
        super().__init__()
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ConfigError(f"JPEG quality must be an integer in [1, 100], got {quality!r}: e.g. 75")
        self.quality = quality

    def params(self) -> dict[str, Any]:
        return {"quality": self.quality}

    def forward(self, x: Tensor) -> Tensor:
        _check_images(x, "JPEG")
        if x.shape[1] not in (1, 3):
            raise ConfigError(f"JPEG compresses grayscale or RGB images, got {x.shape[1]} channels")
        pixels = x.detach().mul(255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        if x.shape[1] == 1:
            decoded = self._codec_grey(pixels[..., 0])[..., None]
        else:
            decoded = np.stack([self._codec(image) for image in pixels])
        out = torch.from_numpy(decoded).permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype) / 255
        # Connected to x with a zero gradient, like torch.round: attacks run and see no signal.
        return out + 0 * x

    def _codec_grey(self, pixels: np.ndarray[Any, np.dtype[np.uint8]]) -> np.ndarray[Any, np.dtype[np.uint8]]:
        """Grayscale images (N, H, W) through the codec as mosaics of at most MOSAIC_SIDE pixels a side."""
        n, h, w = pixels.shape
        bh, bw = -(-h // 8) * 8, -(-w // 8) * 8  # whole 8x8 blocks, as the encoder pads a lone image
        tiles = np.pad(pixels, ((0, 0), (0, bh - h), (0, bw - w)), mode="edge")
        cols = max(1, min(n, self.MOSAIC_SIDE // bw))
        rows = max(1, self.MOSAIC_SIDE // bh)
        out = np.empty_like(pixels)
        for start in range(0, n, cols * rows):
            part = tiles[start : start + cols * rows]
            k = part.shape[0]
            c = min(cols, k)
            r = -(-k // c)
            grid = np.zeros((r * c, bh, bw), dtype=np.uint8)
            grid[:k] = part
            canvas = grid.reshape(r, c, bh, bw).transpose(0, 2, 1, 3).reshape(r * bh, c * bw)
            decoded = self._codec(canvas[:, :, None])[:, :, 0]
            back = decoded.reshape(r, bh, c, bw).transpose(0, 2, 1, 3).reshape(r * c, bh, bw)
            out[start : start + k] = back[:k, :h, :w]
        return out

    def _codec(self, image: np.ndarray[Any, np.dtype[np.uint8]]) -> np.ndarray[Any, np.dtype[np.uint8]]:
        grey = image.shape[2] == 1
        buffer = io.BytesIO()
        Image.fromarray(image[:, :, 0] if grey else image).save(buffer, format="JPEG", quality=self.quality)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            array = np.asarray(decoded.convert("L" if grey else "RGB"), dtype=np.uint8)
        return array[:, :, None] if grey else array


@register_transform("bitdepth")
class BitDepth(Transform):
    """Bit-depth reduction to ``bits`` bits per channel (feature squeezing, Xu et al. 2018, arXiv:1704.01155).

    ``round(x * (2^bits - 1)) / (2^bits - 1)``: its gradient is zero almost everywhere, so it is declared
    non-differentiable; BPDA's surrogate is the identity (straight-through).
    Shape: (N, C, H, W) -> like x.
    """

    primary: ClassVar[str | None] = "bits"
    differentiable = False

    def __init__(self, *, bits: int = 4) -> None:
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
            raise ConfigError(f"bits must be an integer in [1, 16], got {bits!r}: e.g. 4")
        self.bits = bits

    def params(self) -> dict[str, Any]:
        return {"bits": self.bits}

    def forward(self, x: Tensor) -> Tensor:
        levels = (1 << self.bits) - 1
        return torch.round(x * levels) / levels


def _reflect_pad(x: Tensor, pad: int) -> Tensor:
    # Reflection needs pad < size; replicate the border for images smaller than the kernel.
    mode = "reflect" if pad < min(x.shape[-2:]) else "replicate"
    return F.pad(x, (pad, pad, pad, pad), mode=mode)


@register_transform("blur")
class GaussianBlur(Transform):
    """Gaussian blur with standard deviation ``sigma`` (pixels), reflected borders; differentiable.

    ``kernel_size`` defaults to 2 * ceil(3 * sigma) + 1. A depthwise convolution: the output stays in [0, 1].
    Shape: (N, C, H, W) -> like x.
    """

    primary: ClassVar[str | None] = "sigma"
    kernel: Tensor

    def __init__(self, *, sigma: float = 1.0, kernel_size: int | None = None) -> None:
        super().__init__()
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma < math.inf:
            raise ConfigError(f"blur sigma must be a number > 0, got {sigma!r}: e.g. 1.0")
        size = 2 * math.ceil(3 * sigma) + 1 if kernel_size is None else kernel_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
            raise ConfigError(f"kernel_size must be an odd integer >= 1, got {size!r}")
        self.sigma = float(sigma)
        self.kernel_size = size
        offsets = torch.arange(size, dtype=torch.float64) - size // 2
        weights = torch.exp(-(offsets**2) / (2 * self.sigma**2))
        self.register_buffer("kernel", (weights / weights.sum()).float(), persistent=False)

    def params(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "kernel_size": self.kernel_size}

    def forward(self, x: Tensor) -> Tensor:
        _check_images(x, "GaussianBlur")
        c, k = x.shape[1], self.kernel_size
        kernel = self.kernel.to(device=x.device, dtype=x.dtype)
        padded = _reflect_pad(x, k // 2)
        # Separable: one pass along the rows, one along the columns.
        rows = F.conv2d(padded, kernel.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
        return F.conv2d(rows, kernel.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


@register_transform("median")
class MedianFilter(Transform):
    """Median filter over ``kernel_size`` x ``kernel_size`` windows, reflected borders (a denoiser used by
    Xu et al. 2018, arXiv:1704.01155, as a squeezer).

    Autograd's gradient exists almost everywhere but reaches only the median pixel of each window. Sparse
    as it is, on MNIST it guided PGD better than BPDA's identity surrogate (45% vs 49% accuracy at linf
    0.1), so the filter is declared differentiable and attacked through its own gradient.
    Shape: (N, C, H, W) -> like x.
    """

    primary: ClassVar[str | None] = "kernel_size"

    def __init__(self, *, kernel_size: int = 3) -> None:
        super().__init__()
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
            raise ConfigError(f"kernel_size must be an odd integer >= 1, got {kernel_size!r}: e.g. 3")
        if kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be odd, got {kernel_size}: e.g. 3")
        self.kernel_size = kernel_size

    def params(self) -> dict[str, Any]:
        return {"kernel_size": self.kernel_size}

    def forward(self, x: Tensor) -> Tensor:
        _check_images(x, "MedianFilter")
        k = self.kernel_size
        windows = _reflect_pad(x, k // 2).unfold(2, k, 1).unfold(3, k, 1)
        return windows.reshape(*x.shape, k * k).median(dim=-1).values


@register_transform("noise")
class GaussianNoise(Transform):
    """Additive Gaussian noise of standard deviation ``sigma``, clipped to [0, 1]; randomized, differentiable.

    Each call draws new noise (from ``generator`` if set). Evaluate it with EOT.
    Shape: (N, C, H, W) -> like x.
    """

    primary: ClassVar[str | None] = "sigma"
    randomized = True

    def __init__(self, *, sigma: float = 0.1, generator: torch.Generator | None = None) -> None:
        super().__init__(generator=generator)
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 <= sigma < math.inf:
            raise ConfigError(f"noise sigma must be a number >= 0, got {sigma!r}: e.g. 0.1")
        self.sigma = float(sigma)
        self.randomized = self.sigma > 0  # sigma 0 draws nothing: no EOT needed

    def params(self) -> dict[str, Any]:
        return {"sigma": self.sigma}

    def forward(self, x: Tensor) -> Tensor:
        return (x + self.sigma * random_normal(x.shape, x, self.generator)).clamp(0, 1)


@register_transform("resize-pad")
class RandomResizePad(Transform):
    """Random resizing and padding (Xie et al. 2018, arXiv:1711.01991), back to the input size.

    Each image is shrunk by a random factor in [``min_scale``, 1] (bilinear) and placed at a random
    position on a zero canvas of the input size: one vectorised ``grid_sample``. The default 0.9 is the
    paper's ratio 299 / 331. Randomized, differentiable; evaluate it with EOT.
    Shape: (N, C, H, W) -> like x.
    """

    primary: ClassVar[str | None] = "min_scale"
    randomized = True

    def __init__(self, *, min_scale: float = 0.9, generator: torch.Generator | None = None) -> None:
        super().__init__(generator=generator)
        if isinstance(min_scale, bool) or not isinstance(min_scale, (int, float)) or not 0 < min_scale <= 1:
            raise ConfigError(f"min_scale must be in (0, 1], got {min_scale!r}: e.g. 0.9")
        self.min_scale = float(min_scale)

    def params(self) -> dict[str, Any]:
        return {"min_scale": self.min_scale}

    def forward(self, x: Tensor) -> Tensor:
        _check_images(x, "RandomResizePad")
        n = x.shape[0]
        draws = random_uniform((n, 3), x, self.generator)
        scale = self.min_scale + (1 - self.min_scale) * draws[:, 0]
        # Normalised coordinates (align_corners=False): the image covers [offset, offset + 2 * scale] of
        # the canvas [-1, 1], so canvas point u samples the image at u / scale - 1 - offset / scale.
        offset = -1 + 2 * (1 - scale).unsqueeze(1) * draws[:, 1:]
        theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = 1 / scale
        theta[:, 1, 1] = 1 / scale
        theta[:, :, 2] = -1 - offset / scale.unsqueeze(1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@register_transform("tv")
class TVMinimization(Transform):
    """Total-variation minimisation with random pixel dropout (Guo et al. 2018, arXiv:1711.00117).

    Keeps each pixel with probability ``keep_prob`` and solves
    ``min_z 0.5 * ||mask * (z - x)||^2 + weight * TV(z)`` over z in [0, 1] by ``steps`` projected gradient
    steps on a smoothed anisotropic TV, in closed form (no autograd). The solver's output leaves autograd
    with a zero gradient, so it is declared non-differentiable (BPDA: identity, as in Athalye et al.), and
    randomized when ``keep_prob < 1``. Defaults keep MNIST clean accuracy; the paper tunes them per data set.
    Shape: (N, C, H, W) -> like x.
    """

    primary: ClassVar[str | None] = "weight"
    differentiable = False

    def __init__(
        self,
        *,
        weight: float = 0.1,
        keep_prob: float = 0.5,
        steps: int = 50,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator=generator)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < math.inf:
            raise ConfigError(f"TV weight must be a number >= 0, got {weight!r}: e.g. 0.1")
        if isinstance(keep_prob, bool) or not isinstance(keep_prob, (int, float)) or not 0 < keep_prob <= 1:
            raise ConfigError(f"keep_prob must be in (0, 1], got {keep_prob!r}: e.g. 0.5")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"steps must be an integer >= 1, got {steps!r}: e.g. 50")
        self.weight = float(weight)
        self.keep_prob = float(keep_prob)
        self.steps = steps
        self.randomized = self.keep_prob < 1

    def params(self) -> dict[str, Any]:
        return {"weight": self.weight, "keep_prob": self.keep_prob, "steps": self.steps}

    def forward(self, x: Tensor) -> Tensor:
        _check_images(x, "TVMinimization")
        smooth = 1e-2
        with torch.no_grad():
            target = x.detach()
            mask = (random_uniform(x.shape, x, self.generator) < self.keep_prob).to(x.dtype)
            # Lipschitz bound of the objective's gradient: 1 (data) + 8 * weight / sqrt(smooth) (TV).
            rate = 1.0 / (1.0 + 8 * self.weight / math.sqrt(smooth))
            z = target.clone()
            for _ in range(self.steps):
                dx = z[..., :, 1:] - z[..., :, :-1]
                dy = z[..., 1:, :] - z[..., :-1, :]
                gx = self.weight * dx / torch.sqrt(dx * dx + smooth)
                gy = self.weight * dy / torch.sqrt(dy * dy + smooth)
                grad = mask * (z - target)
                grad[..., :, :-1] -= gx
                grad[..., :, 1:] += gx
                grad[..., :-1, :] -= gy
                grad[..., 1:, :] += gy
                z = (z - rate * grad).clamp(0, 1)
        # Connected to x with a zero gradient, as for JPEG.
        return z + 0 * x
