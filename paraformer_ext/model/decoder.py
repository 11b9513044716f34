"""ParaformerSANMDecoder (spec paraformer.md §4.4): `decoders` (FFN → FSMN + residual → cross-attention),
`decoders2` (FFN → FSMN + residual), `decoders3` (FFN only, no residual), `after_norm`, `output_layer`.
Its input is the CIF acoustic (or GLM semantic) embeddings, not token embeddings; `embed` is used only by
the training sampler."""
from __future__ import annotations

import torch
from torch import nn

from .attention import MultiHeadedAttentionCrossAtt, MultiHeadedAttentionSANMDecoder
from .config import DecoderConfig
from ..masks import length_mask
from .layers import Dropout, PositionwiseFeedForwardDecoderSANM, layer_norm


class DecoderLayerSANM(nn.Module):
    def __init__(self, size: int, self_attn: nn.Module | None, src_attn: nn.Module | None, feed_forward: nn.Module, dropout_rate: float):
        super().__init__()
        self.self_attn = self_attn
        self.src_attn = src_attn
        self.feed_forward = feed_forward
        self.norm1 = layer_norm(size)
        if self_attn is not None:
            self.norm2 = layer_norm(size)
        if src_attn is not None:
            self.norm3 = layer_norm(size)
        self.dropout = Dropout(dropout_rate)

    def forward(self, x, lengths, memory=None, memory_mask=None):
        residual = x
        if self.training:
            t = x = self.feed_forward(self.norm1(x))  # the FFN comes first and has no residual of its own
            if self.self_attn is not None:
                x = self.dropout(self.self_attn(self.norm2(t), lengths), residual)
            if self.src_attn is not None:
                x = self.dropout(self.src_attn(self.norm3(x), memory, memory_mask), x)
            return x
        # the pre-norms of the FFN and the cross-attention go along unapplied (fused into int8 quantization)
        t = x = self.feed_forward(x, norm=self.norm1)
        if self.self_attn is not None:
            x = self.self_attn(self.norm2(t), lengths, residual)
        if self.src_attn is not None:
            x = self.src_attn(x, memory, memory_mask, x, norm=self.norm3)
        return x


class ParaformerSANMDecoder(nn.Module):
    """hs (B, T, d) encoder output, hlens (B,), tgt (B, N, d) acoustic embeddings, tgt_lens (B,) →
    logits (B, N, vocab). Rows past tgt_lens are garbage (deterministic); consumers ignore them."""

    def __init__(self, cfg: DecoderConfig, vocab_size: int, d_model: int):
        super().__init__()
        self.cfg = cfg
        u, k, drop = cfg.linear_units, cfg.kernel_size, cfg.dropout_rate
        self.embed = nn.Sequential(nn.Embedding(vocab_size, d_model))
        self.after_norm = layer_norm(d_model)
        self.output_layer = nn.Linear(d_model, vocab_size)

        def ffn():
            return PositionwiseFeedForwardDecoderSANM(d_model, u, drop)

        self.decoders = nn.ModuleList(
            [
                DecoderLayerSANM(
                    d_model,
                    MultiHeadedAttentionSANMDecoder(d_model, k, cfg.sanm_shfit, cfg.self_attention_dropout_rate),
                    MultiHeadedAttentionCrossAtt(cfg.attention_heads, d_model, d_model, cfg.src_attention_dropout_rate),
                    ffn(),
                    drop,
                )
                for _ in range(cfg.att_layer_num)
            ]
        )
        n2 = cfg.num_blocks - cfg.att_layer_num
        # FunASR builds the FSMN-only layers with sanm_shfit=0 whatever the config says.
        self.decoders2 = (
            nn.ModuleList(
                [
                    DecoderLayerSANM(d_model, MultiHeadedAttentionSANMDecoder(d_model, k, 0, cfg.self_attention_dropout_rate), None, ffn(), drop)
                    for _ in range(n2)
                ]
            )
            if n2 > 0
            else None
        )
        self.decoders3 = nn.ModuleList([DecoderLayerSANM(d_model, None, None, ffn(), drop)])

    def forward_hidden(self, hs, hlens, tgt, tgt_lens, memory_mask=None) -> torch.Tensor:
        """Everything but the output projection: (B, N, d) after after_norm. memory_mask: (B, N, T) bool, which
        encoder frames each position may attend to (the streaming training's chunk mask), instead of hlens'."""
        if memory_mask is None:
            memory_mask = length_mask(hlens, hs.size(1), hs.device)
        x = tgt
        for layer in self.decoders:
            x = layer(x, tgt_lens, hs, memory_mask)
        if self.decoders2 is not None:
            for layer in self.decoders2:
                x = layer(x, tgt_lens)
        for layer in self.decoders3:
            x = layer(x, tgt_lens)
        return self.after_norm(x)

    def forward(self, hs, hlens, tgt, tgt_lens, memory_mask=None) -> torch.Tensor:
        return self.output_layer(self.forward_hidden(hs, hlens, tgt, tgt_lens, memory_mask))
