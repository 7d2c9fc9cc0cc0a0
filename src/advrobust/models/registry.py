"""The architecture registry: ``register_model`` adds a factory, ``create_model`` builds a classifier."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from torch import Tensor, nn

from advrobust.errors import ConfigError
from advrobust.models.normalize import Normalize, check_mean_std

ModelFactory = Callable[..., nn.Module]
F = TypeVar("F", bound=ModelFactory)

# The one piece of module state: name -> factory(num_classes=..., in_channels=..., **kwargs).
_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[F], F]:
    """Register a factory ``(num_classes: int, in_channels: int, **kwargs) -> nn.Module`` under ``name``."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"model name must be a non-empty string, got {name!r}: pass e.g. 'small-cnn'")

    def decorator(factory: F) -> F:
        if name in _REGISTRY:
            raise ConfigError(
                f"model {name!r} is already registered: register the new one under another name"
            )
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_models() -> list[str]:
    """The registered architecture names, sorted."""
    return sorted(_REGISTRY)


def model_options(name: str) -> list[str]:
    """The extra keyword options the architecture ``name`` takes (e.g. ``input_size``)."""
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ConfigError(f"unknown model {name!r}: pick one of {', '.join(list_models())}")
    params = inspect.signature(factory).parameters
    return [p for p in params if p not in ("num_classes", "in_channels")]


class Classifier(nn.Module):
    """A network with its input normalization inside: float inputs in [0, 1] to logits.

    ``normalize`` is a ``Normalize`` or ``nn.Identity`` and ``net`` the architecture, so the state-dict keys
    are ``normalize.*`` and ``net.*`` whatever the architecture. The arguments ``create_model`` was called
    with are kept as attributes (``arch``, ``num_classes``, ``in_channels``, ``mean``, ``std``,
    ``model_kwargs``) so that a model card can be written from the model.

    Shape: x (N, in_channels, H, W) in [0, 1] -> logits (N, num_classes).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        arch: str,
        num_classes: int,
        in_channels: int,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.normalize: nn.Module = (
            Normalize(mean, std) if mean is not None and std is not None else nn.Identity()
        )
        self.net = net
        self.arch = arch
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.mean = mean
        self.std = std
        self.model_kwargs: dict[str, Any] = dict(model_kwargs or {})

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(self.normalize(x))
        return out

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, num_classes={self.num_classes}, in_channels={self.in_channels}"


def create_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **kwargs: Any,
) -> Classifier:
    """Build the registered architecture ``name``, with ``Normalize(mean, std)`` inside when given.

    Extra keyword arguments go to the architecture's factory (e.g. ``input_size`` for the MNIST CNNs).
    Weights are freshly initialised (from torch's global generator: seed it to reproduce).

    Shape: the model maps x (N, in_channels, H, W) in [0, 1] to logits (N, num_classes).
    """
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ConfigError(f"unknown model {name!r}: pick one of {', '.join(list_models())}")
    _check_count("num_classes", num_classes, minimum=2)
    _check_count("in_channels", in_channels, minimum=1)
    mean_t: tuple[float, ...] | None = None
    std_t: tuple[float, ...] | None = None
    if (mean is None) != (std is None):
        raise ConfigError("mean and std come together: give both (one value per channel) or neither")
    if mean is not None and std is not None:
        mean_t, std_t = check_mean_std(mean, std)
        if len(mean_t) != in_channels:
            raise ConfigError(
                f"mean/std have {len(mean_t)} values but in_channels={in_channels}: give one value per channel"
            )
    _check_kwargs(name, factory, kwargs)
    net = factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
    return Classifier(
        net,
        arch=name,
        num_classes=num_classes,
        in_channels=in_channels,
        mean=mean_t,
        std=std_t,
        model_kwargs=kwargs,
    )


def _check_count(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}: fix {name}")


def _check_kwargs(name: str, factory: ModelFactory, kwargs: dict[str, Any]) -> None:
    # Checked against the signature rather than by catching TypeError, which would also hide bugs inside.
    try:
        inspect.signature(factory).bind(num_classes=0, in_channels=0, **kwargs)
    except TypeError:
        accepted = model_options(name)
        unknown = sorted(set(kwargs) - set(accepted))
        raise ConfigError(
            f"model {name!r} does not take option(s) {unknown}: use only {accepted or 'no extra options'}"
        ) from None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DataParallel, DistributedDataParallel or torch.compile wrappers (else ``model``)."""
    # DataParallel / DistributedDataParallel keep the model in .module, torch.compile in ._orig_mod.
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
            continue
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner
