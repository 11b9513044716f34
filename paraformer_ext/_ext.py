"""Loading the compiled extension. `import paraformer_ext` works without it (pure-PyTorch reference only)."""
from __future__ import annotations

import torch

try:
    from . import _C  # noqa: F401  (registers torch.ops.paraformer_ext.*)

    _IMPORT_ERROR: Exception | None = None
except ImportError as e:  # not built, or built against another torch
    _C = None
    _IMPORT_ERROR = e


def has_kernels() -> bool:
    """True when the compiled ops are importable (CPU kernels at least)."""
    return _C is not None


def has_cuda_kernels() -> bool:
    """True when the extension was compiled with its CUDA kernels."""
    return _C is not None and bool(_C.build_info()["cuda"])


def kernels_available_for(device: torch.device | str) -> bool:
    """Whether the compiled ops can run on tensors of this device."""
    device = torch.device(device)
    if device.type == "cpu":
        return has_kernels()
    if device.type == "cuda":
        return has_cuda_kernels()
    return False


def build_info() -> dict:
    """What was compiled: {'cpu', 'cuda', 'cuda_archs', 'torch_version', ...}; says why when nothing was."""
    if _C is None:
        return {
            "cpu": False,
            "cuda": False,
            "cuda_archs": None,
            "torch_version": None,
            "runtime_torch_version": torch.__version__,
            "error": f"compiled extension not importable: {_IMPORT_ERROR}. Build it with "
            "`pip install --no-build-isolation .` (see README).",
        }
    info = dict(_C.build_info())
    info["runtime_torch_version"] = torch.__version__
    return info


def require_kernels(what: str) -> None:
    if _C is None:
        raise RuntimeError(
            f"{what} needs the compiled paraformer_ext extension, which failed to import: {_IMPORT_ERROR}. "
            "Rebuild with `pip install --no-build-isolation .` against the installed torch, or use the "
            "reference path (kernels=False)."
        )
