"""Training checkpoints: written atomically, loaded with ``weights_only=True`` and validated."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from advrobust.errors import ModelFileError
from advrobust.fileio import atomic_write_bytes

FORMAT = "advrobust.checkpoint/1"
REQUIRED = ("format", "epoch", "model", "optimizer", "scheduler", "rng", "history", "config")


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Serialise ``state`` (tensors, numbers, strings, dicts, lists only) and write it atomically."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint without unpickling arbitrary objects; refuse anything truncated or foreign."""
    target = Path(path)
    if not target.is_file():
        raise ModelFileError(
            f"no checkpoint at {target}: start without --resume, or point at the run directory"
        )
    try:
        with warnings.catch_warnings():
            # Foreign bytes can read as a pickle of an unknown protocol: torch warns, then fails, and the
            # error below already says what the file is.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = torch.load(target, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated zips and refused globals
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ModelFileError(
            f"checkpoint {target} is corrupt, truncated or not a weights-only advrobust checkpoint ({reason}): "
            "delete it to start over"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ModelFileError(
            f"{target} is not an advrobust checkpoint ({FORMAT}): delete it or pass another run"
        )
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise ModelFileError(
            f"checkpoint {target} lacks {', '.join(missing)}: it is incomplete, delete it to start over"
        )
    return state
