"""Where quickft keeps what it builds once (Scratch models, GGUFs de-quantized): $QUICKFT_CACHE, else
~/.cache/quickft."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("QUICKFT_CACHE") or Path.home() / ".cache" / "quickft")
