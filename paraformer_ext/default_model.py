"""The model shipped inside the package: a small Paraformer trained by paraformer_ext on its synthetic
Mandarin corpus (espeak-ng speech; see its MODEL_CARD.md). `load()` and `paraformer-ext transcribe` use it
when no model directory is given. It knows only espeak-ng's synthetic voices: for real speech, pass a FunASR
model directory."""
from __future__ import annotations

import json
from pathlib import Path

from .bundled import check_files, read_sums

DEFAULT_DIR = Path(__file__).resolve().parent / "models" / "zh-synthetic"


class DefaultModelError(RuntimeError):
    """The shipped model is missing or damaged."""


def default_model_dir() -> Path:
    """The shipped model directory, after checking every file against its SHA256SUMS."""
    sums = DEFAULT_DIR / "SHA256SUMS"
    if not sums.is_file():
        raise DefaultModelError(f"no shipped model in this installation ({sums} is missing: the checkout predates "
                                "the first trained model, or the installation is incomplete); pass a FunASR model "
                                "directory (load(dir) / --model DIR)")
    return check_files(DEFAULT_DIR, read_sums(sums), "default model", DefaultModelError,
                       "pass a FunASR model directory (load(dir) / --model DIR)")


def examples() -> list[dict]:
    """The shipped held-out examples: {"key", "source" (an absolute path), "target" (the expected text)}."""
    rows = []
    with open(default_model_dir() / "examples.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                rows.append({**r, "source": str(DEFAULT_DIR / r["source"])})
    return rows
