"""SANMEncoder (spec paraformer.md §4.2-§4.3): x·sqrt(d) + sinusoidal PE, then `encoders0` (one layer,
input_size → d, no attention residual), `encoders` (num_blocks − 1 layers) and `after_norm`."""
from __future__ import annotations

import math

import torch
from torch import nn

from .attention import MultiHeadedAttentionSANM
from .config import EncoderConfig
from ..masks import length_mask
from .layers import Dropout, PositionwiseFeedForward, layer_norm, sinusoidal_position_encoding


class EncoderLayerSANM(nn.Module):
    def __init__(self, in_size: int, size: int, self_attn: nn.Module, feed_forward: nn.Module, dropout_rate: float):
        super().__init__()
        self.self_attn = self_attn
        self.feed_forward = feed_forward
        self.norm1 = layer_norm(in_size)
        self.norm2 = layer_norm(size)
        self.dropout = Dropout(dropout_rate)
        self.in_size = in_size
        self.size = size

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None, key_mask: torch.Tensor | None) -> torch.Tensor:
        # The first layer changes the width (560 → d), so it has no residual around attention.
        same = self.in_size == self.size
        if self.training:
            att = self.self_attn(self.norm1(x), lengths, key_mask)
            x = self.dropout(att, x if same else None)  # residual + dropout(att), in one pass with kernels
            return self.dropout(self.feed_forward(self.norm2(x)), x)
        # the pre-norms go along unapplied: int8 layers fuse them into their input quantization
        x = self.self_attn(x, lengths, key_mask, x if same else None, norm=self.norm1)
        return self.feed_forward(x, x, norm=self.norm2)


class SANMEncoder(nn.Module):
    """features (B, T, input_size), lengths (B,) → encoder output (B, T, d). Padded frames of the output
    hold deterministic garbage (as in FunASR); consumers mask them."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        d = cfg.output_size

        def layer(in_size: int) -> EncoderLayerSANM:
            attn = MultiHeadedAttentionSANM(
                cfg.attention_heads, in_size, d, cfg.kernel_size, cfg.sanm_shfit, cfg.attention_dropout_rate
            )
            return EncoderLayerSANM(in_size, d, attn, PositionwiseFeedForward(d, cfg.linear_units, cfg.dropout_rate), cfg.dropout_rate)

        self.cfg = cfg
        self.encoders0 = nn.ModuleList([layer(cfg.input_size)])
        self.encoders = nn.ModuleList([layer(d) for _ in range(cfg.num_blocks - 1)])
        self.after_norm = layer_norm(d)

    def output_size(self) -> int:
        return self.cfg.output_size

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """x · sqrt(d) + PE, in float32 (then cast to the encoder's dtype)."""
        B, T, F = features.shape
        x = features.float() * math.sqrt(self.cfg.output_size)
        x = x + sinusoidal_position_encoding(T, F, device=features.device)
        return x.to(self.after_norm.weight.dtype)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(features)
        T = x.size(1)
        if lengths is not None and not torch.compiler.is_compiling() and bool((lengths >= T).all()):
            lengths = None  # no padding: skip all masking work, identical result (a graph break when compiled)
        return self.layers(x, lengths, length_mask(lengths, T, x.device))

    def layers(self, x: torch.Tensor, lengths: torch.Tensor | None, key_mask: torch.Tensor | None) -> torch.Tensor:
        """Every layer and after_norm on embedded frames x (B, T, d). lengths (B,) and key_mask (B, T) as in
        forward; the chunk-masked streaming training passes (B, n) chunk lengths and a per-query (B, T, T) mask."""
        for layer in self.encoders0:
            x = layer(x, lengths, key_mask)
        for layer in self.encoders:
            x = layer(x, lengths, key_mask)
        return self.after_norm(x)
