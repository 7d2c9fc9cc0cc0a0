"""Model files: safetensors weights plus a JSON card (``ModelCard``): what the model is, its checksum.

A run directory holds ``model.safetensors`` and ``card.json``. Loading never unpickles anything: the weights
are checked against the card's sha256 before they are parsed, and the model is rebuilt from the card.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor, nn

from advrobust.errors import ConfigError, ModelFileError
from advrobust.fileio import atomic_write_bytes, atomic_write_json
from advrobust.models.card import ModelCard
from advrobust.models.registry import Classifier, create_model, unwrap_model

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "card.json"
MAX_HEADER_BYTES = 100 * 1024 * 1024
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt"})
_PICKLE_REFUSED = "pickle-based model files are not loaded (they can run code); convert to safetensors"
_NO_MODEL_FIX = "train one with `advrobust train` or pass the run directory"

PathLike = str | os.PathLike[str]


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
    net = unwrap_model(model)
    state = net.state_dict()
    try:
        reference = _rebuild_on_meta(card).state_dict()
    except (ConfigError, TypeError, ValueError) as exc:
        raise ConfigError(f"the card cannot rebuild the model: {_one_line(exc)}") from None
    problem = _state_mismatch(reference, state) or _normalization_mismatch(state, card)
    if problem:
        raise ConfigError(
            f"the model does not match its card ({problem}): build the card with ModelCard.from_model(model, ...)"
        )
    # Contiguous copies on CPU: safetensors refuses shared (tied) storage and non-contiguous tensors.
    tensors = {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format) for k, v in state.items()}
    # One metadata key only: safetensors writes a metadata map in arbitrary order, which would make the
    # file's checksum (the card's weights_sha256) differ between saves of the same weights.
    data = safetensors.torch.save(tensors, metadata={"format": "pt"})
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
    except (KeyboardInterrupt, SystemExit):
        raise
    # Hostile bytes can surface as SafetensorError, as other errors from the parser and torch, or as a Rust
    # panic (pyo3's PanicException is a BaseException); all mean the same here: not a readable weights file.
    except BaseException as exc:
        raise ModelFileError(f"{source} is not a valid safetensors file ({_one_line(exc)}): {fix}") from exc


def load_model(path: PathLike, *, device: str | torch.device | None = None) -> nn.Module:
    """Load a model saved by ``save_model``: verify its checksum, rebuild it from the card, in eval mode.

    ``path`` is a run directory or its ``model.safetensors`` (with ``card.json`` beside it). Pickle files
    (.pt, .pth, .pkl, .bin, ...) are refused, never opened. The model keeps the stored dtype. A card that
    records a defense wrapper (``training["defense"]``, written by ``advrobust defend``) gets it rebuilt.
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
    # The card's model_kwargs are file content: a value of the wrong type is a bad file, not a bug.
    except (ConfigError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{card_path} cannot rebuild the model: {_one_line(exc)}") from None
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
    loaded: nn.Module = model
    defense = card.training.get("defense")
    if isinstance(defense, dict) and "wrapper" in defense:
        # A model saved behind a defense wrapper (advrobust defend) comes back behind it.
        from advrobust.defenses.wrapper import defense_from_spec  # late: defenses build on models

        loaded = defense_from_spec(model, defense)
    if device is not None:
        loaded = loaded.to(device)
    return loaded.eval()


def _refuse_lone_pickle(folder: Path) -> None:
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelFileError(f"no {WEIGHTS_NAME} in {folder}, only {pickles[0]}: {_PICKLE_REFUSED}")
    raise ModelFileError(f"no model at {folder} ({WEIGHTS_NAME} is missing): {_NO_MODEL_FIX}")
