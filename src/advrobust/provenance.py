"""Where a result came from: software versions, hardware, command line and time."""

from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from typing import Any

import torch


def environment() -> dict[str, Any]:
    """Versions and hardware that a result should be reported with."""
    from advrobust import __version__

    info: dict[str, Any] = {
        "advrobust": __version__,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "command": " ".join(sys.argv),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return info
