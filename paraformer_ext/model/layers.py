"""Building blocks shared by encoder and decoder (spec paraformer.md §4)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .._ext import use_kernels
from ..ops.dropout import draw_seed, dropout_fn
from ..ops.linear import linear_fn
from ..ops.sanm import ffn_fn, ffn_ref
from .config import LAYER_NORM_EPS


def layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=LAYER_NORM_EPS)


class Dropout(nn.Dropout):
    """nn.Dropout (same `p`, no parameters) that also adds the layer's residual: in training with kernels,
    the counter-based op (ops/dropout.py: no stored mask, one pass for dropout + residual); otherwise torch's
    dropout, as FunASR."""

    def __init__(self, p: float = 0.5):
        super().__init__(p)
        self.kernels = False

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.training and self.p > 0 and use_kernels(self.kernels, x.device):
            return dropout_fn(x, self.p, draw_seed(), residual)
        y = super().forward(x)
        return y if residual is None else residual + y


def sinusoidal_position_encoding(T: int, depth: int, device=None, dtype=torch.float32, start: int = 0) -> torch.Tensor:
    """FunASR's SinusoidalPositionEncoder (spec §4.3): (T, depth), positions start+1..start+T, [sin | cos]
    halves, inverse timescales exp(−i·ln(10000)/(depth/2 − 1)). Computed in float32 like FunASR's fp32 model.
    start > 0: the rows a streaming encoder (StreamSinusoidalPositionEncoder) adds after `start` frames, equal
    to rows start.. of the table for start + T (each row depends on its position only)."""
    positions = torch.arange(start + 1, start + T + 1, device=device, dtype=torch.float32)
    log_inc = torch.log(torch.tensor([10000.0], device=device, dtype=torch.float32)) / (depth / 2 - 1)
    inv = torch.exp(torch.arange(depth // 2, device=device, dtype=torch.float32) * (-log_inc))
    scaled = positions[:, None] * inv[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1).to(dtype)


class PositionwiseFeedForward(nn.Module):
    """Encoder FFN: w_2(ReLU(w_1 x)) (+ residual, folded into the second GEMM on the fused path)."""

    def __init__(self, d_model: int, d_ff: int, dropout_rate: float = 0.0):
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff)
        self.w_2 = nn.Linear(d_ff, d_model)
        self.dropout = Dropout(dropout_rate)
        self.kernels = False

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, norm: nn.Module | None = None) -> torch.Tensor:
        """norm: the layer's pre-norm, when x is not normalised yet (fused into int8 quantization)."""
        if not self.training and use_kernels(self.kernels, x.device):
            return ffn_fn(self, x, residual, norm)
        x = x if norm is None else norm(x)
        if self.training:
            y = self.w_2(self.dropout(torch.relu(self.w_1(x))))  # FunASR's order: dropout after the ReLU
            return y if residual is None else residual + y
        return ffn_ref(self, x, residual)


class PositionwiseFeedForwardDecoderSANM(nn.Module):
    """Decoder FFN: w_2(LayerNorm(ReLU(w_1 x))), w_2 without bias (spec §4.4)."""

    def __init__(self, d_model: int, d_ff: int, dropout_rate: float = 0.0):
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff)
        self.w_2 = nn.Linear(d_ff, d_model, bias=False)
        self.norm = layer_norm(d_ff)
        self.dropout = Dropout(dropout_rate)
        self.kernels = False

    def forward(self, x: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor:
        """norm: the layer's pre-norm, when x is not normalised yet."""
        if not self.training and use_kernels(self.kernels, x.device):
            if getattr(self.w_1, "chains_int8", False) and getattr(self.w_2, "chains_int8", False):
                return self.w_1.chain(self.w_2, x, norm=norm, mid_norm=self.norm)
            return linear_fn(self.w_2, self.norm(linear_fn(self.w_1, x, relu=True, norm=norm)))
        x = x if norm is None else norm(x)
        return self.w_2(self.norm(self.dropout(torch.relu(self.w_1(x)))))




