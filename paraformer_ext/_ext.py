"""Loading the compiled extension, and the one rule behind every `kernels=` in the package.

`import paraformer_ext` works without the extension (the plain-PyTorch reference runs everything), but never
silently: `use_kernels` is the only place that decides between a compiled op and its reference.

kernels=None (the default everywhere): the compiled ops where they are built for the tensors' device, else
    the reference, with a warning (once per device type) that says why and how to fix it.
kernels=True: the compiled ops, or a KernelsUnavailableError that says why they cannot run.
kernels=False: the plain-PyTorch reference everywhere.
"""
from __future__ import annotations

import warnings

import torch

try:
    from . import _C  # noqa: F401  (registers torch.ops.paraformer_ext.*)

    _IMPORT_ERROR: Exception | None = None
except ImportError as e:  # not built, or built against another torch
    _C = None
    _IMPORT_ERROR = e

_FIX = "rebuild it against the installed torch with `pip install --no-build-isolation -e .` (or `bash scripts/setup.sh`)"
_warned: set[str] = set()  # device types already warned about


class KernelsUnavailableError(RuntimeError):
    """kernels=True, but the compiled ops cannot run on the requested device."""


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


def _why_unavailable(device: torch.device) -> str:
    if _C is None:
        return f"the compiled paraformer_ext extension failed to import ({_IMPORT_ERROR}); {_FIX}"
    if device.type == "cuda":
        return ("the extension was built without CUDA kernels (no nvcc, or a CPU-only torch at build time); "
                "rebuild on a machine with CUDA, or pass kernels=False")
    return f"there are no compiled kernels for device type {device.type!r}; pass kernels=False"


def use_kernels(kernels: bool | None, device: torch.device | str) -> bool:
    """Whether to run the compiled ops on `device`, by the rule in this module's docstring."""
    if kernels is False:
        return False
    device = torch.device(device)
    if kernels_available_for(device):
        return True
    if kernels is True:
        raise KernelsUnavailableError(f"kernels=True on {device.type}, but {_why_unavailable(device)}")
    if device.type not in _warned:
        _warned.add(device.type)
        warnings.warn(f"paraformer_ext runs its plain-PyTorch reference (slow): {_why_unavailable(device)}. "
                      "Pass kernels=False to choose the reference and silence this.", RuntimeWarning, stacklevel=3)
    return False


def autocast_inputs(device: torch.device | str, *tensors):
    """The float tensors cast to the autocast dtype when autocast is on for `device` (None and non-float
    tensors unchanged). Autocast does not reach custom ops: their Python wrappers call this, so an op casts its
    inputs as autocast casts a convolution's."""
    dev = torch.device(device).type
    if not torch.is_autocast_enabled(dev):
        return tensors
    dt = torch.get_autocast_dtype(dev)
    return tuple(t.to(dt) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in tensors)


def build_info() -> dict:
    """What was compiled: {'cpu', 'cuda', 'cuda_archs', 'torch_version', ...}; says why when nothing was."""
    if _C is None:
        return {
            "cpu": False,
            "cuda": False,
            "cuda_archs": None,
            "torch_version": None,
            "runtime_torch_version": torch.__version__,
            "error": f"compiled extension not importable: {_IMPORT_ERROR}; {_FIX}",
        }
    info = dict(_C.build_info())
    info["runtime_torch_version"] = torch.__version__
    return info
