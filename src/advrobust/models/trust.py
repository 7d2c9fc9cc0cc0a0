"""Files whose loading runs code (pickle): refused unless the user names the exact file they trust.

``torch.load(weights_only=True)`` uses torch's restricted unpickler, which builds tensors and plain
containers only, so state dicts saved with ``torch.save`` load without trust. A pickled model *object*
needs the full unpickler, which can run any code the file carries: it is loaded only with
``trust_pickle=SHA256`` (``--trust-pickle SHA256``), the digest of the file as its source publishes it,
checked on the very bytes that are then unpickled.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advrobust.errors import ConfigError, ModelFileError

#: Suffixes of pickle-based model files (``torch.save``, ``pickle.dump``).
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".pth.tar", ".pt.tar")
_DIGEST = re.compile(r"[0-9a-f]{64}")


def is_pickle_file(spec: str) -> bool:
    """Whether ``spec`` names a pickle-based file by its suffix."""
    return spec.lower().endswith(PICKLE_SUFFIXES)


def check_digest(value: object) -> str:
    """``value`` as a lower-case SHA-256 hex digest, or a ConfigError that says what to pass."""
    if isinstance(value, str) and _DIGEST.fullmatch(value.strip().lower()):
        return value.strip().lower()
    raise ConfigError(
        f"--trust-pickle takes the file's SHA-256 (64 hex digits, as its source publishes it), got {value!r}: "
        "advrobust unpickles only a file whose digest you name"
    )


def verify_digest(path: Path, data: bytes, expected: str) -> None:
    """Refuse ``data`` (read from ``path``) unless its SHA-256 is ``expected``."""
    want = check_digest(expected)
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise ModelFileError(
            f"{path} has SHA-256 {got}, not the {want} given with --trust-pickle: it is not the file you "
            "trust, so nothing was loaded"
        )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"cannot read {path} ({exc.strerror}): check the path") from None


def _safe_load(data: bytes) -> tuple[Any, str | None]:
    """``torch.load(weights_only=True)``: (object, None), or (None, why it needs the full unpickler)."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it may not support
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), None
    except (KeyboardInterrupt, SystemExit):
        raise
    except pickle.UnpicklingError as exc:
        return None, " ".join(str(exc).split())[:200]
    except Exception as exc:
        return None, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def load_state_dict_file(path: Path) -> tuple[dict[str, Tensor], bytes]:
    """A state dict saved with ``torch.save``, through the weights-only unpickler; (state, file bytes)."""
    data = _read(path)
    state, problem = _safe_load(data)
    if problem is not None:
        raise ModelFileError(
            f"{path} is not a weights-only file ({problem}): save the state dict (torch.save("
            "model.state_dict(), ...)) or, better, safetensors.torch.save_file(model.state_dict(), "
            "'weights.safetensors')"
        )
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise ModelFileError(
            f"{path} holds a {type(state).__name__}, not a state dict of tensors: save model.state_dict()"
        )
    return dict(state), data


def load_pickled_model(path: Path, *, trust_pickle: str | None) -> tuple[nn.Module, bytes]:
    """A whole model object saved with ``torch.save(model, path)``; (module, file bytes).

    Refused without ``trust_pickle`` (see the module docstring); a file that is only a state dict is
    pointed at ``--weights``.
    """
    data = _read(path)
    if trust_pickle is not None:
        verify_digest(path, data, trust_pickle)
    obj, problem = _safe_load(data)
    if problem is None:
        if isinstance(obj, Mapping):
            raise ConfigError(
                f"{path} holds weights (a state dict), not a model: pass the architecture as --model "
                f"pkg.module:factory (or timm:NAME) with --weights {path}"
            )
        raise ModelFileError(f"{path} holds a {type(obj).__name__}, not a torch model")
    if trust_pickle is None:
        raise ModelFileError(
            f"{path} is a pickled model object: loading it runs code stored in the file. Save its weights "
            "(safetensors) and pass --model pkg.module:factory --weights FILE; or, only if you trust whoever "
            "made it, pass --trust-pickle SHA256 with the file's digest as its source publishes it"
        )
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        raise ModelFileError(
            f"{path} could not be unpickled ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}): the "
            "code that defines the model must be importable here"
        ) from None
    if not isinstance(obj, nn.Module):
        raise ModelFileError(f"{path} holds a {type(obj).__name__}, not a torch model (nn.Module)")
    return obj, data
