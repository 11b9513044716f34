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

from ..masks import length_mask
from .fsmn import fsmn_memory_fn, fsmn_memory_ref
from .linear import gemm_into, linear_fn


def _mask4(key_mask: torch.Tensor) -> torch.Tensor:
    """A key mask (B, Tk), or a per-query one (B, Tq, Tk) (the chunk-masked streaming training), as (B, 1, ·, Tk)."""
    return key_mask[:, None, None, :] if key_mask.dim() == 2 else key_mask[:, None]


def masked_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None,
                             dropout: nn.Module | None = None) -> torch.Tensor:
    """FunASR's forward_attention. q (B,H,Tq,dk) already scaled; k, v (B,H,Tk,dk); key_mask (B,Tk) or (B,Tq,Tk)
    bool. Masked keys get −inf before the softmax and exactly 0 after it (an all-masked row gives 0, not NaN).
    dropout (training): applied to the attention probabilities, as FunASR does."""
    scores = torch.matmul(q, k.transpose(-2, -1))
    if key_mask is not None:
        pad = ~_mask4(key_mask)
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
    if _dropout_p(dropout) > 0:
        # training: the probabilities go through the layer's own dropout (the counter-based op with kernels);
        # SDPA's would draw a Bernoulli tensor of (B, H, Tq, Tk) instead, a twentieth of a CPU training step
        return masked_softmax_attention(q * scale, k, v, key_mask, dropout)
    mask = None if key_mask is None else _mask4(key_mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _dropout_p(dropout: nn.Module | None) -> float:
    """The probability of a training-mode nn.Dropout, else 0 (eval mode passes None)."""
    return float(dropout.p) if dropout is not None and dropout.training else 0.0


# --- encoder self-attention ------------------------------------------------------------------------------


def _fsmn(fsmn, v: torch.Tensor, w: torch.Tensor, lengths: torch.Tensor | None, left: int,
          residual: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`fsmn` (fsmn_memory_ref or _fn) over whole sequences (lengths (B,) or None) or, with lengths (B, n), over
    each of the n chunks of T / n frames alone, zero outside it: what the zeroed shift rows between chunks make of
    FunASR's FSMN in the chunk-masked training encoder (training/streaming.py)."""
    if lengths is None or lengths.dim() == 1:
        return fsmn(v, w, lengths, left, residual, bias)
    B, T, D = v.shape
    n = lengths.size(1)
    chunks = lambda t: None if t is None else t.reshape(B * n, T // n, D)  # noqa: E731
    return fsmn(chunks(v), w, lengths.reshape(-1), left, chunks(residual), bias).reshape(B, T, D)


def sanm_self_attention_ref(attn, x: torch.Tensor, lengths: torch.Tensor | None, key_mask: torch.Tensor | None,
                            residual: torch.Tensor | None = None, dropout: nn.Module | None = None) -> torch.Tensor:
    """FunASR's MultiHeadedAttentionSANM.forward, plus the layer's residual.

    attn: MultiHeadedAttentionSANM (linear_q_k_v, linear_out, fsmn_block, h, d_k, left); x: (B, T, in_feat)
    (already normalised); lengths: (B,) or None, or (B, n) for the FSMN per chunk (`_fsmn`); key_mask: (B, T) or
    per query (B, T, T) bool, or None; residual: (B, T, D) or None
    (the first encoder layer has none); dropout (training): FunASR's, on the attention probabilities and on
    the FSMN memory. Returns residual + linear_out(MHA) + FSMN(V): (B, T, D).
    """
    n_feat = attn.h * attn.d_k
    q, k, v = torch.split(attn.linear_q_k_v(x), n_feat, dim=-1)
    q_h = _heads(q, attn.h) * attn.d_k ** (-0.5)
    att = attn.linear_out(_merge(masked_softmax_attention(q_h, _heads(k, attn.h), _heads(v, attn.h), key_mask, dropout)))
    if dropout is not None:
        out = att + dropout(_fsmn(fsmn_memory_ref, v, attn.fsmn_block.weight, lengths, attn.left))
    else:
        out = _fsmn(fsmn_memory_ref, v, attn.fsmn_block.weight, lengths, attn.left, att)
    return out if residual is None else residual + out


def sanm_self_attention_fn(attn, x: torch.Tensor, lengths: torch.Tensor | None, key_mask: torch.Tensor | None,
                           residual: torch.Tensor | None = None, norm: nn.Module | None = None,
                           dropout: nn.Module | None = None) -> torch.Tensor:
    """Fused twin of `sanm_self_attention_ref` (same arguments, same result up to float rounding); norm: the
    layer's pre-norm, when x is not normalised yet (fused into an int8 QKV projection's quantization)."""
    n_feat = attn.h * attn.d_k
    qkv = linear_fn(attn.linear_q_k_v, x, norm=norm)
    q, k, v = torch.split(qkv, n_feat, dim=-1)  # views; in backward one cat instead of three zero-filled copies
    att = _merge(_sdpa(_heads(q, attn.h), _heads(k, attn.h), _heads(v, attn.h), key_mask, attn.d_k ** (-0.5), dropout))
    lin = attn.linear_out
    if _dropout_p(dropout) > 0:  # training: the FSMN memory is dropped out before anything is added to it
        mem = dropout(_fsmn(fsmn_memory_fn, v, attn.fsmn_block.weight, lengths, attn.left), residual)
        return linear_fn(lin, att, residual=mem)
    if type(lin) is not nn.Linear:  # a Linear-like replacement (int8) adds the residual in its own epilogue
        return linear_fn(lin, att, residual=_fsmn(fsmn_memory_fn, v, attn.fsmn_block.weight, lengths, attn.left, residual))
    base = _fsmn(fsmn_memory_fn, v, attn.fsmn_block.weight, lengths, attn.left, residual, lin.bias)
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


# --- streaming (FunASR's forward_chunk): attention over cached keys and values -----------------------------------


def _keys_with_past(k, v, lengths, past_k, past_v, past_lengths):
    """(keys, values, key_mask) over [past (B, L, D) valid to past_lengths, current (B, T, D) valid to lengths];
    the mask is None when nothing is padded."""
    T = k.size(1)
    if past_k is None or past_k.size(1) == 0:
        K, V, mask = k, v, _valid(lengths, T)
    else:
        K, V = torch.cat([past_k, k], dim=1), torch.cat([past_v, v], dim=1)
        mp, mc = _valid(past_lengths, past_k.size(1)), _valid(lengths, T)
        if mp is None and mc is None:
            mask = None
        else:
            B = k.size(0)
            ones = lambda n: torch.ones(B, n, dtype=torch.bool, device=k.device)  # noqa: E731
            mask = torch.cat([ones(past_k.size(1)) if mp is None else mp, ones(T) if mc is None else mc], dim=1)
    return K, V, mask


def _valid(lengths, T):
    """length_mask, or None when no item is padded (attention then runs unmasked)."""
    if lengths is None or not bool((lengths < T).any()):
        return None
    return length_mask(lengths, T)


def sanm_chunk_attention(attn, x: torch.Tensor, lengths: torch.Tensor | None, past_k: torch.Tensor | None,
                         past_v: torch.Tensor | None, past_lengths: torch.Tensor | None,
                         residual: torch.Tensor | None, kernels: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FunASR's MultiHeadedAttentionSANM.forward_chunk, plus the layer's residual, for a padded batch of streams.

    x: (B, T, in_feat) normalised chunk frames, valid to lengths (B,) (None: all); past_k, past_v: (B, L, D) the
    stream's cached keys/values (FunASR's look-back cache, before the head split), valid to past_lengths, or
    None. Every query attends to every valid key (no chunk mask: FunASR's attention here has none); the FSMN
    memory covers the chunk's own frames only, zero outside them (mask None in FunASR). Returns (out (B, T, D),
    k (B, T, D), v (B, T, D)): the output and this chunk's keys/values for the caller's cache. kernels: the
    fused path (linear_fn, SDPA, the FSMN op accumulating residual + bias) or FunASR's arithmetic."""
    n_feat = attn.h * attn.d_k
    qkv = linear_fn(attn.linear_q_k_v, x) if kernels else attn.linear_q_k_v(x)
    q, k, v = qkv[..., :n_feat], qkv[..., n_feat : 2 * n_feat], qkv[..., 2 * n_feat :]
    K, V, mask = _keys_with_past(k, v, lengths, past_k, past_v, past_lengths)
    w = attn.fsmn_block.weight
    if kernels:
        att = _merge(_sdpa(_heads(q, attn.h), _heads(K, attn.h), _heads(V, attn.h), mask, attn.d_k ** (-0.5)))
        lin = attn.linear_out
        if type(lin) is not nn.Linear:
            out = linear_fn(lin, att, residual=fsmn_memory_fn(v, w, lengths, attn.left, residual))
        else:
            out = gemm_into(fsmn_memory_fn(v, w, lengths, attn.left, residual, lin.bias), lin, att)
    else:
        q_h = _heads(q, attn.h) * attn.d_k ** (-0.5)
        att = attn.linear_out(_merge(masked_softmax_attention(q_h, _heads(K, attn.h), _heads(V, attn.h), mask)))
        out = fsmn_memory_ref(v, w, lengths, attn.left, att)
        out = out if residual is None else residual + out
    return out, k, v


def cross_attention_chunk(attn, x: torch.Tensor, memory: torch.Tensor, memory_lengths: torch.Tensor | None,
                          past_k: torch.Tensor | None, past_v: torch.Tensor | None,
                          past_lengths: torch.Tensor | None, residual: torch.Tensor | None, norm: nn.Module | None,
                          kernels: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FunASR's MultiHeadedAttentionCrossAtt.forward_chunk (+ residual) for a padded batch of streams: the
    queries x (B, N, D) attend to [cached keys (B, L, D) valid to past_lengths, this chunk's memory (B, T, D)
    valid to memory_lengths]. norm: x's pre-norm. Returns (out (B, N, D), k, v (B, T, D) of this memory)."""
    n_feat = attn.h * attn.d_k
    xn = x if norm is None else norm(x)
    if kernels:
        kv = linear_fn(attn.linear_k_v, memory)
        q = linear_fn(attn.linear_q, xn)
    else:
        kv = attn.linear_k_v(memory)
        q = attn.linear_q(xn)
    k, v = kv[..., :n_feat], kv[..., n_feat:]
    K, V, mask = _keys_with_past(k, v, memory_lengths, past_k, past_v, past_lengths)
    if kernels:
        att = _sdpa(_heads(q, attn.h), _heads(K, attn.h), _heads(V, attn.h), mask, attn.d_k ** (-0.5))
        return linear_fn(attn.linear_out, _merge(att), residual=residual), k, v
    q_h = _heads(q, attn.h) * attn.d_k ** (-0.5)
    out = attn.linear_out(_merge(masked_softmax_attention(q_h, _heads(K, attn.h), _heads(V, attn.h), mask)))
    return (out if residual is None else residual + out), k, v
