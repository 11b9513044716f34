"""SAN-M attention modules (spec paraformer.md §4.1, §4.4) with FunASR's attribute names: the encoder's
self-attention with an FSMN memory on V, the decoder's FSMN-only "self-attention", and the decoder's
cross-attention. The arithmetic lives in ops/sanm.py (`*_ref`: FunASR's, `*_fn`: fused); `kernels` picks.

Every forward takes an optional `residual` that is added to the output, so the fused path can fold the
layer's residual connection into its last pass over memory (layers pass it only in eval mode, where
dropout is the identity).
"""
from __future__ import annotations

import torch
from torch import nn

from .._ext import use_kernels as _use_kernels
from ..ops.fsmn import fsmn_left, fsmn_memory
from .layers import Dropout
from ..ops.sanm import cross_attention_fn, cross_attention_ref, sanm_self_attention_fn, sanm_self_attention_ref


def use_kernels(module: nn.Module, x: torch.Tensor) -> bool:
    return _use_kernels(module.kernels, x.device)


class MultiHeadedAttentionSANM(nn.Module):
    """Encoder self-attention: out = linear_out(MHA(q, k, v)) + FSMN(v) (+ residual).

    x: (B, T, in_feat) normalised input; lengths: (B,) or None; key_mask: (B, T) bool or None.
    """

    def __init__(self, n_head: int, in_feat: int, n_feat: int, kernel_size: int, sanm_shfit: int = 0, dropout_rate: float = 0.0):
        super().__init__()
        self.h = n_head
        self.d_k = n_feat // n_head
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.linear_q_k_v = nn.Linear(in_feat, 3 * n_feat)
        self.dropout = Dropout(dropout_rate)
        self.fsmn_block = nn.Conv1d(n_feat, n_feat, kernel_size, groups=n_feat, bias=False)
        self.left = fsmn_left(kernel_size, sanm_shfit)
        self.kernels = False

    def forward(self, x, lengths, key_mask, residual=None, norm=None):
        """norm: the layer's pre-norm, when x is not normalised yet (the fused path fuses it where it can)."""
        drop = self.dropout if self.training else None  # FunASR's, on attention probabilities and FSMN memory
        if use_kernels(self, x):
            return sanm_self_attention_fn(self, x, lengths, key_mask, residual, norm, drop)
        return sanm_self_attention_ref(self, x if norm is None else norm(x), lengths, key_mask, residual, drop)


class MultiHeadedAttentionSANMDecoder(nn.Module):
    """The decoder's FSMN-only self-attention: out = mask ⊙ (xm + dwconv(xm)) (+ residual), xm = mask ⊙ x."""

    def __init__(self, n_feat: int, kernel_size: int, sanm_shfit: int = 0, dropout_rate: float = 0.0):
        super().__init__()
        self.dropout = Dropout(dropout_rate)
        self.fsmn_block = nn.Conv1d(n_feat, n_feat, kernel_size, groups=n_feat, bias=False)
        self.left = fsmn_left(kernel_size, sanm_shfit)
        self.kernels = False

    def forward(self, x, lengths, residual=None):
        if self.training and self.dropout.p > 0:  # FunASR drops out the memory before the layer's residual
            return self.dropout(fsmn_memory(x, self.fsmn_block.weight, lengths, self.left, kernels=self.kernels), residual)
        return fsmn_memory(x, self.fsmn_block.weight, lengths, self.left, residual, kernels=self.kernels)


class MultiHeadedAttentionCrossAtt(nn.Module):
    """Decoder cross-attention over the encoder output (spec §4.4).

    x: (B, N, n_feat) normalised queries; memory: (B, T, encoder_dim); memory_mask: (B, T) bool or None.
    """

    def __init__(self, n_head: int, n_feat: int, encoder_output_size: int | None = None, dropout_rate: float = 0.0):
        super().__init__()
        self.h = n_head
        self.d_k = n_feat // n_head
        enc = encoder_output_size or n_feat
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k_v = nn.Linear(enc, 2 * n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.dropout = Dropout(dropout_rate)
        self.kernels = False

    def forward(self, x, memory, memory_mask, residual=None, norm=None):
        """norm: the pre-norm of x, when x is not normalised yet."""
        drop = self.dropout if self.training else None  # FunASR's, on the attention probabilities
        if use_kernels(self, x):
            return cross_attention_fn(self, x, memory, memory_mask, residual, norm, drop)
        return cross_attention_ref(self, x if norm is None else norm(x), memory, memory_mask, residual, drop)
