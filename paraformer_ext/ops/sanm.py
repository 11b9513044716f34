"""SAN-M attention layers (spec paraformer.md §4.1, §4.4) as a fused path (`*_fn`) beside FunASR's
arithmetic (`*_ref`). Both take the attention module (for its Linear layers, which may be nn.Linear or an
int8 replacement) and return the layer's output *including* the residual.

The fused path makes the fewest passes over memory it can with stock kernels around one of ours:
* Q, K, V are read in place from the QKV projection (strided views) by torch's scaled_dot_product_attention
  (flash / memory-efficient kernels on CUDA, the flash kernel on CPU) with the key-padding mask;
  the d_k^-0.5 scale goes to the kernel instead of a separate pass over q;
* the FSMN op reads V in place and writes residual + memory + output bias in one pass;
* the output projection accumulates into that tensor (GEMM with beta = 1 on CUDA, oneDNN's add post-op on
  CPU), so the attention output is never added in a separate pass; every Linear runs with its bias, ReLU or
  residual fused into the GEMM (ops/linear.py).
The reference path computes exactly what FunASR computes (explicit scores, −inf fill, softmax, 0 fill).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fsmn import fsmn_memory_fn, fsmn_memory_ref
from .linear import gemm_into, linear_fn


def masked_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None,
                             dropout: nn.Module | None = None) -> torch.Tensor:
    """FunASR's forward_attention. q (B,H,Tq,dk) already scaled; k, v (B,H,Tk,dk); key_mask (B,Tk) bool.
    Masked keys get −inf before the softmax and exactly 0 after it (an all-masked row gives 0, not NaN).
    dropout (training): applied to the attention probabilities, as FunASR does."""
    scores = torch.matmul(q, k.transpose(-2, -1))
    if key_mask is not None:
        pad = ~key_mask[:, None, None, :]
        scores = scores.masked_fill(pad, float("-inf"))
        attn = torch.softmax(scores, dim=-1).masked_fill(pad, 0.0)
    else:
        attn = torch.softmax(scores, dim=-1)
    if dropout is not None:
        attn = dropout(attn)
    return torch.matmul(attn, v)


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """(B, T, D) → (B, H, T, D/H) view (no copy, also for a column slice of a wider projection)."""
    return x.unflatten(-1, (h, x.size(-1) // h)).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    B, H, T, dk = x.shape
    return x.transpose(1, 2).reshape(B, T, H * dk)


def _sdpa(q, k, v, key_mask, scale, dropout: nn.Module | None = None):
    mask = None if key_mask is None else key_mask[:, None, None, :]
    p = _dropout_p(dropout)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, dropout_p=p)


def _dropout_p(dropout: nn.Module | None) -> float:
    """The probability of a training-mode nn.Dropout, else 0 (eval mode passes None)."""
    return float(dropout.p) if dropout is not None and dropout.training else 0.0


# --- encoder self-attention ------------------------------------------------------------------------------


def sanm_self_attention_ref(attn, x: torch.Tensor, lengths: torch.Tensor | None, key_mask: torch.Tensor | None,
                            residual: torch.Tensor | None = None, dropout: nn.Module | None = None) -> torch.Tensor:
    """FunASR's MultiHeadedAttentionSANM.forward, plus the layer's residual.

    attn: MultiHeadedAttentionSANM (linear_q_k_v, linear_out, fsmn_block, h, d_k, left); x: (B, T, in_feat)
    (already normalised); lengths: (B,) or None; key_mask: (B, T) bool or None; residual: (B, T, D) or None
    (the first encoder layer has none); dropout (training): FunASR's, on the attention probabilities and on
    the FSMN memory. Returns residual + linear_out(MHA) + FSMN(V): (B, T, D).
    """
    n_feat = attn.h * attn.d_k
    q, k, v = torch.split(attn.linear_q_k_v(x), n_feat, dim=-1)
    q_h = _heads(q, attn.h) * attn.d_k ** (-0.5)
    att = attn.linear_out(_merge(masked_softmax_attention(q_h, _heads(k, attn.h), _heads(v, attn.h), key_mask, dropout)))
    if dropout is not None:
        out = att + dropout(fsmn_memory_ref(v, attn.fsmn_block.weight, lengths, attn.left))
    else:
        out = fsmn_memory_ref(v, attn.fsmn_block.weight, lengths, attn.left, att)
    return out if residual is None else residual + out


def sanm_self_attention_fn(attn, x: torch.Tensor, lengths: torch.Tensor | None, key_mask: torch.Tensor | None,
                           residual: torch.Tensor | None = None, norm: nn.Module | None = None,
                           dropout: nn.Module | None = None) -> torch.Tensor:
    """Fused twin of `sanm_self_attention_ref` (same arguments, same result up to float rounding); norm: the
    layer's pre-norm, when x is not normalised yet (fused into an int8 QKV projection's quantization)."""
    n_feat = attn.h * attn.d_k
    qkv = linear_fn(attn.linear_q_k_v, x, norm=norm)
    q, k, v = qkv[..., :n_feat], qkv[..., n_feat : 2 * n_feat], qkv[..., 2 * n_feat :]
    att = _merge(_sdpa(_heads(q, attn.h), _heads(k, attn.h), _heads(v, attn.h), key_mask, attn.d_k ** (-0.5), dropout))
    lin = attn.linear_out
    if _dropout_p(dropout) > 0:  # training: the FSMN memory is dropped out before anything is added to it
        mem = dropout(fsmn_memory_fn(v, attn.fsmn_block.weight, lengths, attn.left))
        return linear_fn(lin, att, residual=mem if residual is None else mem + residual)
    if type(lin) is not nn.Linear:  # a Linear-like replacement (int8) adds the residual in its own epilogue
        return linear_fn(lin, att, residual=fsmn_memory_fn(v, attn.fsmn_block.weight, lengths, attn.left, residual))
    base = fsmn_memory_fn(v, attn.fsmn_block.weight, lengths, attn.left, residual, lin.bias)
    return gemm_into(base, lin, att)


# --- decoder cross-attention -----------------------------------------------------------------------------


def cross_attention_ref(attn, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None,
                        residual: torch.Tensor | None = None, dropout: nn.Module | None = None) -> torch.Tensor:
    """FunASR's MultiHeadedAttentionCrossAtt.forward, plus the residual.

    attn: MultiHeadedAttentionCrossAtt; x: (B, N, D) normalised queries; memory: (B, T, D_enc) encoder output;
    memory_mask: (B, T) bool or None; residual: (B, N, D) or None; dropout (training): on the attention
    probabilities, as FunASR. Returns (B, N, D).
    """
    n_feat = attn.h * attn.d_k
    q_h = _heads(attn.linear_q(x), attn.h) * attn.d_k ** (-0.5)
    k, v = torch.split(attn.linear_k_v(memory), n_feat, dim=-1)
    out = attn.linear_out(_merge(masked_softmax_attention(q_h, _heads(k, attn.h), _heads(v, attn.h), memory_mask, dropout)))
    return out if residual is None else residual + out


def cross_attention_fn(attn, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None,
                       residual: torch.Tensor | None = None, norm: nn.Module | None = None,
                       dropout: nn.Module | None = None) -> torch.Tensor:
    """Fused twin of `cross_attention_ref`; norm: the pre-norm of x when x is not normalised yet."""
    n_feat = attn.h * attn.d_k
    kv = linear_fn(attn.linear_k_v, memory)
    k, v = kv[..., :n_feat], kv[..., n_feat:]
    q = linear_fn(attn.linear_q, x, norm=norm)
    att = _sdpa(_heads(q, attn.h), _heads(k, attn.h), _heads(v, attn.h), memory_mask, attn.d_k ** (-0.5), dropout)
    return linear_fn(attn.linear_out, _merge(att), residual=residual)


# --- feed-forward blocks ---------------------------------------------------------------------------------


def ffn_ref(ff, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """Encoder FFN w_2(ReLU(w_1 x)) (+ residual). x: (B, T, D)."""
    y = ff.w_2(torch.relu(ff.w_1(x)))
    return y if residual is None else residual + y


def ffn_fn(ff, x: torch.Tensor, residual: torch.Tensor | None = None, norm: nn.Module | None = None) -> torch.Tensor:
    """Fused twin of `ffn_ref`: ReLU in the first GEMM's epilogue, the residual in the second's; norm: the
    pre-norm of x when x is not normalised yet. Two int8 GEMMs pass the hidden layer on as int8."""
    if getattr(ff.w_1, "chains_int8", False) and getattr(ff.w_2, "chains_int8", False):
        return ff.w_1.chain(ff.w_2, x, residual=residual, norm=norm)
    return linear_fn(ff.w_2, linear_fn(ff.w_1, x, relu=True, norm=norm), residual=residual)
