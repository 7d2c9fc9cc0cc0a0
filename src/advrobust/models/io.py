"""Model files: safetensors weights plus a JSON card saying what the model is, how it was made, its checksum.

A run directory holds ``model.safetensors`` and ``card.json``. Loading never unpickles anything: the weights
are checked against the card's sha256 before they are parsed, and the model is rebuilt from the card.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn

from advrobust.errors import ConfigError, ModelFileError
from advrobust.fileio import atomic_write_bytes, atomic_write_json
from advrobust.models.normalize import check_mean_std
from advrobust.models.registry import Classifier, create_model

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "card.json"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 100 * 1024 * 1024
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt"})
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PICKLE_REFUSED = "pickle-based model files are not loaded (they can run code); convert to safetensors"
_NO_MODEL_FIX = "train one with `advrobust train` or pass the run directory"

PathLike = str | os.PathLike[str]


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
        net = _unwrap(model)
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


def _unwrap(model: nn.Module) -> nn.Module:
    # DataParallel / DistributedDataParallel keep the model in .module, torch.compile in ._orig_mod.
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
            continue
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _rebuild_on_meta(card: ModelCard) -> Classifier:
    # On the meta device: no memory and no random initialisation, only the structure.
    with torch.device("meta"):
        return create_model(
            card.arch,
            num_classes=card.num_classes,
            in_channels=card.in_channels,
            mean=card.mean,
            std=card.std,
            **card.model_kwargs,
        )


def _state_mismatch(expected: Mapping[str, Tensor], got: Mapping[str, Tensor]) -> str | None:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        return ", ".join(parts)
    shapes = [
        f"{k} {tuple(got[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(expected)
        if got[k].shape != expected[k].shape
    ]
    if shapes:
        return f"shape mismatch {_few(shapes)}"
    kinds = [
        f"{k} {got[k].dtype} vs {expected[k].dtype}"
        for k in sorted(expected)
        if got[k].is_floating_point() != expected[k].is_floating_point()
        or (not expected[k].is_floating_point() and got[k].dtype != expected[k].dtype)
    ]
    if kinds:
        return f"dtype mismatch {_few(kinds)}"
    floating = sorted({str(t.dtype) for t in got.values() if t.is_floating_point()})
    if len(floating) > 1:
        return f"mixed floating dtypes {floating}"
    return None


def _few(items: Sequence[str], limit: int = 3) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def save_model(model: nn.Module, path: PathLike, card: ModelCard) -> Path:
    """Save ``model`` into the run directory ``path``: ``model.safetensors`` and ``card.json``, atomically.

    The card must describe the model (``ModelCard.from_model`` writes one); its ``weights_sha256`` is set
    here. Weights are stored contiguous, on CPU, in the model's dtype. Returns the directory.
    """
    if not isinstance(card, ModelCard):
        raise ConfigError(
            f"save_model needs a ModelCard, got {type(card).__name__}: build one with ModelCard(...)"
        )
    folder = Path(path)
    if folder.suffix in PICKLE_SUFFIXES or folder.suffix == ".safetensors":
        raise ConfigError(
            f"save_model takes a run directory, got the file name {folder}: pass a directory path"
        )
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file, not a run directory: pass a directory path to save_model")
    net = _unwrap(model)
    state = net.state_dict()
    try:
        reference = _rebuild_on_meta(card).state_dict()
    except ConfigError as exc:
        raise ConfigError(f"the card cannot rebuild the model: {exc}") from None
    problem = _state_mismatch(reference, state) or _normalization_mismatch(state, card)
    if problem:
        raise ConfigError(
            f"the model does not match its card ({problem}): build the card with ModelCard.from_model(model, ...)"
        )
    # Contiguous copies on CPU: safetensors refuses shared (tied) storage and non-contiguous tensors.
    tensors = {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format) for k, v in state.items()}
    data = safetensors.torch.save(tensors, metadata={"format": "pt", "arch": card.arch})
    card = replace(card, weights_sha256=hashlib.sha256(data).hexdigest())
    # Weights first, card last: a crash in between leaves a checksum mismatch, never a silently wrong model.
    atomic_write_bytes(folder / WEIGHTS_NAME, data)
    atomic_write_json(folder / CARD_NAME, card.to_dict())
    return folder


def _normalization_mismatch(state: Mapping[str, Tensor], card: ModelCard) -> str | None:
    for key, values in (("normalize.mean", card.mean), ("normalize.std", card.std)):
        if key in state and values is not None:
            stored = state[key].detach().to("cpu", torch.float64).flatten()
            if not torch.allclose(stored, torch.tensor(values, dtype=torch.float64), rtol=1e-6, atol=1e-7):
                return f"{key} is {stored.tolist()} but the card says {list(values)}"
    return None


def _paths(path: PathLike) -> tuple[Path, Path]:
    """(weights file, card file) for a run directory, a .safetensors file or a card.json."""
    p = Path(path)
    if p.suffix in PICKLE_SUFFIXES or p.name.endswith((".pth.tar", ".pt.tar")):
        raise ModelFileError(f"{p}: {_PICKLE_REFUSED}")
    if p.is_dir():
        return p / WEIGHTS_NAME, p / CARD_NAME
    if p.suffix == ".safetensors":
        return p, p.parent / CARD_NAME
    if p.name == CARD_NAME:
        return p.parent / WEIGHTS_NAME, p
    if not p.exists():
        raise ModelFileError(f"no model at {p}: {_NO_MODEL_FIX}")
    raise ModelFileError(
        f"{p} is not a model file: pass a run directory (model.safetensors + card.json) or a .safetensors file"
    )


def read_card(path: PathLike) -> ModelCard:
    """The card of the model at ``path`` (a run directory, its .safetensors file, or card.json itself)."""
    _, card_path = _paths(path)
    return _read_card_file(card_path)


def _read_card_file(card_path: Path) -> ModelCard:
    if not card_path.parent.is_dir():
        raise ModelFileError(f"no model at {card_path.parent}: {_NO_MODEL_FIX}")
    try:
        raw = card_path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(
            f"no model at {card_path.parent} ({CARD_NAME} is missing): {_NO_MODEL_FIX}"
        ) from None
    except OSError as exc:
        raise ModelFileError(
            f"cannot read {card_path} ({exc.strerror}): check the path and permissions"
        ) from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise ModelFileError(
            f"{card_path} is not valid JSON ({_one_line(exc)}): restore it or re-save the model with save_model"
        ) from None
    try:
        return ModelCard.from_dict(data)
    except ModelFileError as exc:
        raise ModelFileError(f"{card_path}: {exc}") from None


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:limit]


def _read_verified(weights: Path, card: ModelCard, card_path: Path) -> bytes:
    # One read: the bytes that are hashed are the bytes that are parsed.
    if not card.weights_sha256:
        raise ModelFileError(f"{card_path} has no weights_sha256: re-save the model with save_model")
    try:
        data = weights.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(
            f"no model at {weights.parent} ({weights.name} is missing): {_NO_MODEL_FIX}"
        ) from None
    except OSError as exc:
        raise ModelFileError(
            f"cannot read {weights} ({exc.strerror}): check the path and permissions"
        ) from None
    if hashlib.sha256(data).hexdigest() != card.weights_sha256:
        raise ModelFileError(
            f"{weights}: weights do not match card.json: the file is corrupt or was replaced; retrain or restore it"
        )
    return data


def _parse_safetensors(data: bytes, source: Path) -> dict[str, Tensor]:
    fix = "restore it or re-save the model with save_model"
    if len(data) < 8:
        raise ModelFileError(f"{source} is truncated ({len(data)} bytes, no safetensors header): {fix}")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > MAX_HEADER_BYTES:
        raise ModelFileError(
            f"{source}: safetensors header length {header_len} is over the 100 MB limit: "
            f"the file is corrupt or not safetensors; {fix}"
        )
    if 8 + header_len > len(data):
        raise ModelFileError(
            f"{source} is truncated (header of {header_len} bytes in a file of {len(data)}): {fix}"
        )
    try:
        return safetensors.torch.load(data)
    # Hostile bytes can surface as SafetensorError but also as other errors from the parser and torch;
    # every one of them means the same thing here: not a readable weights file.
    except Exception as exc:
        raise ModelFileError(f"{source} is not a valid safetensors file ({_one_line(exc)}): {fix}") from exc


def load_model(path: PathLike, *, device: str | torch.device | None = None) -> nn.Module:
    """Load a model saved by ``save_model``: verify its checksum, rebuild it from the card, in eval mode.

    ``path`` is a run directory or its ``model.safetensors`` (with ``card.json`` beside it). Pickle files
    (.pt, .pth, .pkl, .bin, ...) are refused, never opened. The model keeps the stored dtype.
    """
    weights, card_path = _paths(path)
    if not weights.parent.is_dir():
        raise ModelFileError(f"no model at {weights.parent}: {_NO_MODEL_FIX}")
    if not weights.is_file():
        _refuse_lone_pickle(weights.parent)
    card = _read_card_file(card_path)
    state = _parse_safetensors(_read_verified(weights, card, card_path), weights)
    try:
        model = _rebuild_on_meta(card)
    except ConfigError as exc:
        raise ModelFileError(f"{card_path} cannot rebuild the model: {exc}") from None
    problem = _state_mismatch(model.state_dict(), state)
    if problem:
        raise ModelFileError(
            f"{weights} does not fit its card ({problem}): restore the matching card.json or retrain"
        )
    try:
        # assign=True adopts the loaded tensors (dtype included) in place of the meta ones: no copy.
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelFileError(
            f"{weights} does not fit its card ({_one_line(exc)}): restore it or retrain"
        ) from exc
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ConfigError(
            f"model {card.arch!r} has tensors outside its state dict ({_few(left)}): make its buffers persistent"
        )
    if device is not None:
        model = model.to(device)
    return model.eval()


def _refuse_lone_pickle(folder: Path) -> None:
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelFileError(f"no {WEIGHTS_NAME} in {folder}, only {pickles[0]}: {_PICKLE_REFUSED}")
    raise ModelFileError(f"no model at {folder} ({WEIGHTS_NAME} is missing): {_NO_MODEL_FIX}")
