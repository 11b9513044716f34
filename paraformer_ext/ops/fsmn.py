"""FSMN memory block (spec paraformer.md §4.5), used by the SAN-M encoder, the decoder and the FSMN-VAD.

For u (B, T, D), weight W (D, K) and the valid-frame mask m (from lengths):

    ũ = u ⊙ m
    y[t] = ũ[t] + Σ_{j<K} W[:, j] ⊙ ũ[t + j − left]      (zero outside [0, T))
    out = y ⊙ m (+ residual) (+ bias)

`left` taps look back and K−1−left look ahead: FunASR's SAN-M uses left = (K−1)//2 + max(sanm_shfit, 0)
(`fsmn_left`), its VAD left = K−1 (strictly causal). The optional `residual` (B, T, D) and `bias` (D,) are
added after the mask: the SAN-M encoder uses them to build residual + memory + output bias in the same
pass, and the attention's output projection then accumulates into that tensor (ops/sanm.py).
x may be a column slice of a wider tensor (V inside the QKV projection): only its channels need stride 1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._ext import autocast_inputs, has_kernels, use_kernels
from ..masks import length_mask


def fsmn_left(kernel_size: int, sanm_shfit: int = 0) -> int:
    """FunASR's left padding of the FSMN convolution (attention.py: pad_fn)."""
    return (kernel_size - 1) // 2 + (sanm_shfit if sanm_shfit > 0 else 0)


def _weight_2d(weight: torch.Tensor) -> torch.Tensor:
    if weight.dim() == 3:  # Conv1d depthwise layout (D, 1, K)
        if weight.size(1) != 1:
            raise ValueError(f"fsmn weight must be (D, K) or (D, 1, K), got {tuple(weight.shape)}")
        weight = weight[:, 0, :]
    if weight.dim() != 2:
        raise ValueError(f"fsmn weight must be (D, K) or (D, 1, K), got {tuple(weight.shape)}")
    return weight


def fsmn_memory_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    lengths: torch.Tensor | None = None,
    left: int | None = None,
    residual: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain PyTorch FSMN memory, computed as FunASR does (mask, pad, depthwise conv1d, add, mask).

    x: (B, T, D); weight: (D, K) or (D, 1, K); lengths: (B,) int or None; left: default (K−1)//2;
    residual: (B, T, D) or None; bias: (D,) or None. Returns (B, T, D) in x's dtype.
    """
    w = _weight_2d(weight)
    B, T, D = x.shape
    K = w.size(1)
    left = (K - 1) // 2 if left is None else left
    if not 0 <= left < K:
        raise ValueError(f"left must be in [0, {K - 1}], got {left}")
    m = length_mask(lengths, T, x.device)
    m = None if m is None else m.to(x.dtype)  # multiplied in, as FunASR masks
    xm = x if m is None else x * m[:, :, None]
    y = F.conv1d(F.pad(xm.transpose(1, 2), (left, K - 1 - left)), w[:, None, :], groups=D).transpose(1, 2)
    y = y + xm
    if m is not None:
        y = y * m[:, :, None]
    if residual is not None:
        y = residual + y
    if bias is not None:
        y = y + bias
    return y


# --- the compiled op: fake impl and autograd -----------------------------------------------------------------

if has_kernels():

    @torch.library.register_fake("paraformer_ext::fsmn_memory")
    def _fsmn_memory_fake(x, weight, lengths, left, residual, bias=None):
        torch._check(x.dim() == 3, lambda: "x must be (B, T, D)")
        torch._check(weight.dim() == 2, lambda: "weight must be (D, K)")
        return x.new_empty(x.shape)

    @torch.library.register_fake("paraformer_ext::fsmn_memory_weight_grad")
    def _fsmn_weight_grad_fake(grad_out, x, lengths, left, kernel_size):
        return x.new_empty((x.shape[2], kernel_size))

    def _fsmn_setup_context(ctx, inputs, output):
        x, weight, lengths, left, residual, bias = inputs
        ctx.save_for_backward(x, weight, lengths)
        ctx.left = left
        ctx.has_residual = residual is not None
        ctx.has_bias = bias is not None

    def _fsmn_backward(ctx, grad_out):
        x, weight, lengths = ctx.saved_tensors
        K = weight.size(1)
        grad_x = grad_w = grad_res = grad_bias = None
        grad_out = grad_out.contiguous()
        if ctx.needs_input_grad[0]:
            # The transpose of a masked correlation is the masked correlation with the flipped kernel.
            grad_x = torch.ops.paraformer_ext.fsmn_memory(grad_out, weight.flip(1), lengths, K - 1 - ctx.left, None, None)
        if ctx.needs_input_grad[1]:
            grad_w = torch.ops.paraformer_ext.fsmn_memory_weight_grad(grad_out, x, lengths, ctx.left, K)
        if ctx.has_residual and ctx.needs_input_grad[4]:
            grad_res = grad_out
        if ctx.has_bias and ctx.needs_input_grad[5]:
            grad_bias = grad_out.sum(dim=(0, 1))
        return grad_x, grad_w, None, None, grad_res, grad_bias

    torch.library.register_autograd(
        "paraformer_ext::fsmn_memory", _fsmn_backward, setup_context=_fsmn_setup_context
    )


def fsmn_memory_fn(
    x: torch.Tensor,
    weight: torch.Tensor,
    lengths: torch.Tensor | None = None,
    left: int | None = None,
    residual: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The compiled FSMN memory op; same signature and result as `fsmn_memory_ref`."""
    w = _weight_2d(weight)
    left = (w.size(1) - 1) // 2 if left is None else left
    if lengths is not None and lengths.dtype != torch.int64 and not lengths.is_floating_point():
        lengths = lengths.to(torch.int64)  # float lengths are rejected by the op with a clear message
    x, w, residual, bias = autocast_inputs(x.device, x, w, residual, bias)
    return torch.ops.paraformer_ext.fsmn_memory(x, w, lengths, left, residual, bias)


def fsmn_memory(
    x: torch.Tensor,
    weight: torch.Tensor,
    lengths: torch.Tensor | None = None,
    left: int | None = None,
    residual: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    kernels: bool | None = None,
) -> torch.Tensor:
    """FSMN memory block: `fsmn_memory_fn` or `fsmn_memory_ref`, chosen by `kernels` for x's device
    (_ext.use_kernels)."""
    if use_kernels(kernels, x.device):
        return fsmn_memory_fn(x, weight, lengths, left, residual, bias)
    return fsmn_memory_ref(x, weight, lengths, left, residual, bias)
