"""Counter-based dropout: the keep decision of each element is a hash of (seed, element index).

    out = (residual +) x * m,   m[i] = 1 / (1 - p) if h(seed, i) >= round(p * 2^32) else 0   (p = 1: m = 0)

x is read in row-major (contiguous) order; i is the element's index there. h is two rounds of Chris Wellons'
lowbias32 (csrc/dropout.h). Why not torch's dropout: torch draws a Bernoulli tensor with its generator, keeps
it for the backward pass and multiplies twice; here the mask costs a few integer operations per element, is
never stored (the backward pass is the same op on the gradient, same seed), and the residual add of the layer
goes into the same pass. On the CPU training step that was a fifth of the time (benchmarks/bench_train.py).

The seed is drawn from torch's default generator (`torch.manual_seed` and the trainer's saved RNG state make
a run reproducible, as with torch's dropout), not from the tensor's device, so CUDA runs draw the same masks.
The mask differs from torch's for the same seed: only its distribution is the same.
"""
from __future__ import annotations

import torch

from .._ext import autocast_inputs, has_kernels, use_kernels

_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for int64 tensors holding uint32 values, without int64 overflow."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _threshold(p: float) -> int:
    t = p * 4294967296.0
    return int(t + 0.5) if t < 4294967294.5 else _M32


def _check(x: torch.Tensor, p: float, residual: torch.Tensor | None) -> None:
    if not x.is_floating_point():
        raise TypeError(f"dropout: x must be a float tensor, got {x.dtype}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(f"dropout: residual must match x ({tuple(x.shape)}, {x.dtype}), got "
                         f"({tuple(residual.shape)}, {residual.dtype})")


def dropout_mask_ref(numel: int, p: float, seed: int, device=None) -> torch.Tensor:
    """The keep mask (numel,) bool of `dropout_ref` for this seed (p = 1 still reports the hash's verdict)."""
    s = seed & 0xFFFFFFFFFFFFFFFF
    k0, k1 = s & _M32, s >> 32
    i = torch.arange(numel, dtype=torch.int64, device=device)
    k0 = _mix32(i >> 32) ^ k0  # the index's high word folded into the first key (0 below 2^32: mix32(0) = 0)
    h = _mix32((_mix32((i & _M32) ^ k0) + k1) & _M32)
    return h >= _threshold(p)


def dropout_ref(x: torch.Tensor, p: float, seed: int, residual: torch.Tensor | None = None) -> torch.Tensor:
    """Plain PyTorch twin of `dropout_fn`: the same mask, the same bits.

    x: any shape, float dtype; p in [0, 1]; seed: int64; residual: x's shape and dtype, or None.
    Returns x's shape and dtype, contiguous.
    """
    _check(x, p, residual)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    scale = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)
    keep = dropout_mask_ref(x.numel(), p, seed, x.device).view(x.shape)
    m = torch.where(keep, torch.tensor(scale, dtype=acc, device=x.device), torch.tensor(0.0, dtype=acc, device=x.device))
    y = x.to(acc) * m
    if residual is not None:
        y = residual.to(acc) + y
    return y.to(x.dtype).contiguous()


if has_kernels():

    @torch.library.register_fake("paraformer_ext::dropout_hash")
    def _dropout_fake(x, p, seed, residual=None):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    def _dropout_setup_context(ctx, inputs, output):
        x, p, seed, residual = inputs
        ctx.p, ctx.seed = p, seed
        ctx.has_residual = residual is not None

    def _dropout_backward(ctx, grad_out):
        # the same mask, regenerated from the seed: d out / d x = m, d out / d residual = 1
        grad_x = torch.ops.paraformer_ext.dropout_hash(grad_out, ctx.p, ctx.seed, None) if ctx.needs_input_grad[0] else None
        grad_res = grad_out if ctx.has_residual and ctx.needs_input_grad[3] else None
        return grad_x, None, None, grad_res

    torch.library.register_autograd("paraformer_ext::dropout_hash", _dropout_backward,
                                    setup_context=_dropout_setup_context)


def dropout_fn(x: torch.Tensor, p: float, seed: int, residual: torch.Tensor | None = None) -> torch.Tensor:
    """The compiled op; same signature and result as `dropout_ref`."""
    x, residual = autocast_inputs(x.device, x, residual)
    return torch.ops.paraformer_ext.dropout_hash(x, float(p), int(seed), residual)


def draw_seed() -> int:
    """A seed for one dropout call, from torch's default (CPU) generator."""
    return int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))

