"""The model card: what a saved model is, how it was trained, and the checksum of its weights."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

import torch
from torch import nn

from advrobust.errors import ConfigError, ModelFileError
from advrobust.models.normalize import check_mean_std
from advrobust.models.registry import Classifier, unwrap_model

FORMAT_VERSION = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _advrobust_version() -> str:
    from advrobust import __version__  # late: advrobust/__init__ may import this module

    return __version__


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True, kw_only=True)
class ModelCard:
    """What a saved model is (architecture, input format, normalization), how it was trained, its checksum.

    ``training`` records the objective or defense, epochs, seed and hyperparameters; ``metrics`` the clean
    and robust accuracies measured. Both, and ``model_kwargs``, must be JSON (numbers, strings, lists, dicts).
    ``weights_sha256`` is filled in by ``save_model``.
    """

    arch: str
    num_classes: int
    in_channels: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    classes: tuple[str, ...] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    advrobust_version: str = field(default_factory=_advrobust_version)
    torch_version: str = field(default_factory=lambda: str(torch.__version__))
    weights_sha256: str = ""
    created: str = field(default_factory=_now)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        # JSON gives lists where the card holds tuples; accept both so that from_dict round-trips exactly.
        for name in ("input_shape", "mean", "std", "classes"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        for name in ("model_kwargs", "training", "metrics"):
            object.__setattr__(self, name, _canonical_json(name, getattr(self, name)))
        self._validate()

    def _validate(self) -> None:
        _check(
            isinstance(self.arch, str) and bool(self.arch), f"arch must be a model name, got {self.arch!r}"
        )
        _check(_is_int(self.num_classes, 2), f"num_classes must be an integer >= 2, got {self.num_classes!r}")
        _check(_is_int(self.in_channels, 1), f"in_channels must be an integer >= 1, got {self.in_channels!r}")
        shape = self.input_shape
        _check(
            isinstance(shape, tuple) and len(shape) == 3 and all(_is_int(s, 1) for s in shape),
            f"input_shape must be (C, H, W) of positive integers, got {shape!r}",
        )
        _check(shape[0] == self.in_channels, f"input_shape {shape} does not start with in_channels")
        _check((self.mean is None) == (self.std is None), "mean and std come together: give both or neither")
        if self.mean is not None and self.std is not None:
            check_mean_std(self.mean, self.std)
            _check(len(self.mean) == self.in_channels, "mean/std need one value per input channel")
        _check(self.dataset is None or isinstance(self.dataset, str), "dataset must be a name or None")
        if self.classes is not None:
            _check(
                isinstance(self.classes, tuple)
                and len(self.classes) == self.num_classes
                and all(isinstance(c, str) for c in self.classes),
                f"classes must be num_classes={self.num_classes} names, got {self.classes!r}",
            )
        for name in ("advrobust_version", "torch_version", "created"):
            _check(isinstance(getattr(self, name), str), f"{name} must be a string")
        _check(
            self.weights_sha256 == "" or bool(_SHA256.fullmatch(str(self.weights_sha256))),
            "weights_sha256 must be empty or 64 lowercase hex digits",
        )
        _check(
            self.format_version == FORMAT_VERSION and type(self.format_version) is int,
            f"format_version must be {FORMAT_VERSION}",
        )

    def to_dict(self) -> dict[str, Any]:
        """The card as plain JSON types (tuples become lists)."""
        out = asdict(self)
        for name in ("input_shape", "mean", "std", "classes"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        """Rebuild a card from ``to_dict()`` output; anything missing, unknown or invalid is a ModelFileError."""
        if not isinstance(data, Mapping):
            raise ModelFileError(
                f"a model card must be a JSON object, got {type(data).__name__}: re-save the model"
            )
        version = data.get("format_version")
        if type(version) is not int or version != FORMAT_VERSION:
            if type(version) is int and version > FORMAT_VERSION:
                raise ModelFileError(
                    f"card format_version {version} is newer than this advrobust reads ({FORMAT_VERSION}): "
                    "upgrade advrobust"
                )
            raise ModelFileError(
                f"card format_version {version!r} is not one advrobust knows ({FORMAT_VERSION}): "
                "re-save the model with save_model"
            )
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(data))
        if missing:
            raise ModelFileError(f"model card lacks field(s) {missing}: re-save the model with save_model")
        unknown = sorted(str(k) for k in set(data) - names)
        if unknown:
            raise ModelFileError(
                f"model card has unknown field(s) {unknown}: re-save the model with this advrobust's save_model"
            )
        try:
            return cls(**{name: data[name] for name in names})
        except ConfigError as exc:
            raise ModelFileError(f"invalid model card: {exc}") from None

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        *,
        input_shape: tuple[int, int, int],
        dataset: str | None = None,
        classes: Sequence[str] | None = None,
        training: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> ModelCard:
        """A card for a model built by ``create_model`` (its arch, sizes, normalization and options)."""
        net = unwrap_model(model)
        if not isinstance(net, Classifier):
            raise ConfigError(
                f"ModelCard.from_model needs a model built by create_model, got {type(net).__name__}: "
                "build it with create_model or write the ModelCard by hand"
            )
        return cls(
            arch=net.arch,
            num_classes=net.num_classes,
            in_channels=net.in_channels,
            input_shape=tuple(input_shape),  # type: ignore[arg-type]  # validated in __post_init__
            mean=net.mean,
            std=net.std,
            model_kwargs=dict(net.model_kwargs),
            dataset=dataset,
            classes=tuple(classes) if classes is not None else None,
            training=dict(training or {}),
            metrics=dict(metrics or {}),
        )


def _check(condition: bool, problem: str) -> None:
    if not condition:
        raise ConfigError(f"model card: {problem}: fix the card")


def _is_int(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _canonical_json(name: str, value: object) -> dict[str, Any]:
    # Stored as its JSON round trip, so a loaded card equals the saved one (tuples -> lists, int keys -> str).
    if not isinstance(value, Mapping):
        raise ConfigError(f"model card: {name} must be a dict, got {type(value).__name__}: fix the card")
    try:
        out: dict[str, Any] = json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ConfigError(
            f"model card: {name} is not JSON ({exc}): use numbers, strings, lists and dicts only"
        ) from None
    return out
