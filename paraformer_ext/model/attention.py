"""SAN-M attention (spec paraformer.md §4.1, §4.4): self-attention with an FSMN memory on V, the decoder's
FSMN-only "self-attention", and the decoder's cross-attention. Attribute names match FunASR's state_dict.

Each module computes FunASR's reference arithmetic when `kernels` is False, and uses the compiled ops
(paraformer_ext.ops) when True and they are built for the tensors' device.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops.fsmn import fsmn_left, fsmn_memory


def masked_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """FunASR's forward_attention: q already scaled. q (B,H,Tq,dk), k/v (B,H,Tk,dk), key_mask (B,Tk) bool.
    Masked keys get −inf before the softmax and exactly 0 after it (so an all-masked row gives 0, not NaN)."""
    scores = torch.matmul(q, k.transpose(-2, -1))
    if key_mask is not None:
        pad = ~key_mask[:, None, None, :]
        scores = scores.masked_fill(pad, float("-inf"))
        attn = torch.softmax(scores, dim=-1).masked_fill(pad, 0.0)
    else:
        attn = torch.softmax(scores, dim=-1)
    return torch.matmul(attn, v)


def _split_heads(x: torch.Tensor, h: int) -> torch.Tensor:
    B, T, D = x.shape
    return x.view(B, T, h, D // h).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    B, H, T, dk = x.shape
    return x.transpose(1, 2).reshape(B, T, H * dk)


class MultiHeadedAttentionSANM(nn.Module):
    """Encoder self-attention: out = linear_out(MHA(q, k, v)) + FSMN(v).

    x: (B, T, in_feat); lengths: (B,) or None. Returns (B, T, n_feat).
    """

    def __init__(self, n_head: int, in_feat: int, n_feat: int, kernel_size: int, sanm_shfit: int = 0, dropout_rate: float = 0.0):
        super().__init__()
        self.h = n_head
        self.d_k = n_feat // n_head
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.linear_q_k_v = nn.Linear(in_feat, 3 * n_feat)
        self.dropout = nn.Dropout(dropout_rate)
        self.fsmn_block = nn.Conv1d(n_feat, n_feat, kernel_size, groups=n_feat, bias=False)
        self.left = fsmn_left(kernel_size, sanm_shfit)
        self.kernels = False

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None, key_mask: torch.Tensor | None) -> torch.Tensor:
        n_feat = self.h * self.d_k
        q, k, v = torch.split(self.linear_q_k_v(x), n_feat, dim=-1)
        q_h = _split_heads(q, self.h) * self.d_k ** (-0.5)
        att = masked_softmax_attention(q_h, _split_heads(k, self.h), _split_heads(v, self.h), key_mask)
        att = self.linear_out(_merge_heads(att))
        # FSMN memory on V, fused with the add to the attention output.
        return fsmn_memory(v, self.fsmn_block.weight, lengths, self.left, att, kernels=self.kernels)


class MultiHeadedAttentionSANMDecoder(nn.Module):
    """The decoder's FSMN-only self-attention: out = mask ⊙ (xm + dwconv(xm)), xm = mask ⊙ x."""

    def __init__(self, n_feat: int, kernel_size: int, sanm_shfit: int = 0, dropout_rate: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout_rate)
        self.fsmn_block = nn.Conv1d(n_feat, n_feat, kernel_size, groups=n_feat, bias=False)
        self.left = fsmn_left(kernel_size, sanm_shfit)
        self.kernels = False

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        return fsmn_memory(x, self.fsmn_block.weight, lengths, self.left, None, kernels=self.kernels)


class MultiHeadedAttentionCrossAtt(nn.Module):
    """Decoder cross-attention over the encoder output (spec §4.4).

    x: (B, N, n_feat) queries; memory: (B, T, encoder_dim); memory_mask: (B, T) bool or None.
    """

    def __init__(self, n_head: int, n_feat: int, encoder_output_size: int | None = None, dropout_rate: float = 0.0):
        super().__init__()
        self.h = n_head
        self.d_k = n_feat // n_head
        enc = encoder_output_size or n_feat
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k_v = nn.Linear(enc, 2 * n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.dropout = nn.Dropout(dropout_rate)
        self.kernels = False

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None) -> torch.Tensor:
        n_feat = self.h * self.d_k
        q_h = _split_heads(self.linear_q(x), self.h) * self.d_k ** (-0.5)
        k, v = torch.split(self.linear_k_v(memory), n_feat, dim=-1)
        att = masked_softmax_attention(q_h, _split_heads(k, self.h), _split_heads(v, self.h), memory_mask)
        return self.linear_out(_merge_heads(att))


__all__ = [
    "MultiHeadedAttentionSANM",
    "MultiHeadedAttentionSANMDecoder",
    "MultiHeadedAttentionCrossAtt",
    "masked_softmax_attention",
]
