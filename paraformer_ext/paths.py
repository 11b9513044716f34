"""Where paraformer_ext keeps what it downloads or derives (VAD weights, int8 models it cannot write beside
model.pt, the demo's files)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$PARAFORMER_EXT_CACHE (with ~ expanded), else ~/.cache/paraformer_ext. Not created here."""
    env = os.environ.get("PARAFORMER_EXT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "paraformer_ext"
