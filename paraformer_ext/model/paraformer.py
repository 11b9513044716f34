"""The Paraformer model (spec paraformer.md §1): encoder → CIF predictor → decoder, greedy decoding.

Attribute names match FunASR's state_dict, so a FunASR model.pt loads key for key (checkpoint.py).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .._ext import use_kernels
from ..masks import length_mask
from ..ops.out_proj import out_proj_argmax
from .config import ParaformerConfig
from .decoder import ParaformerSANMDecoder
from .encoder import SANMEncoder
from .predictor import CifPredictorV2



def zero_padded_frames(enc: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """enc (B, T, d) with frames t ≥ lengths[b] set to 0: padded frames hold garbage, and the predictor's
    convolution must see batch-1 zero padding (inference and training alike; NaN-proof)."""
    if not torch.compiler.is_compiling() and not bool((lengths < enc.size(1)).any()):  # no graph break on a value
        return enc
    return enc.masked_fill(~length_mask(lengths, enc.size(1))[:, :, None], 0.0)


class CTC(nn.Module):
    """Only present when model_conf.ctc_weight > 0 (its weights must load); greedy decoding ignores it."""

    def __init__(self, odim: int, encoder_output_size: int):
        super().__init__()
        self.ctc_lo = nn.Linear(encoder_output_size, odim)


class GreedyOutput(NamedTuple):
    """Batched result of `Paraformer.greedy`. Per item b, only the first token_num[b] positions are real."""

    token_ids: torch.Tensor  # (B, N) int64 argmax ids (before removing specials)
    token_logp: torch.Tensor  # (B, N) float32 log-probability of the argmax id
    token_num: torch.Tensor  # (B,) int64
    encoder_out: torch.Tensor  # (B, T, d)
    encoder_lengths: torch.Tensor  # (B,)
    alphas: torch.Tensor  # (B, T+1) float32, tail slot at each item's length
    fires: torch.Tensor  # (B, T+1) float32
    acoustic_embeds: torch.Tensor  # (B, N, d)
    log_posteriors: torch.Tensor | None = None  # (B, N, vocab) float32, only when greedy(log_posteriors=True)


class Paraformer(nn.Module):
    def __init__(self, cfg: ParaformerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = SANMEncoder(cfg.encoder)
        self.decoder = ParaformerSANMDecoder(cfg.decoder, cfg.vocab_size, cfg.d_model)
        self.predictor = CifPredictorV2(cfg.predictor)
        self.ctc = CTC(cfg.vocab_size, cfg.d_model) if cfg.model.ctc_weight > 0.0 else None
        self.kernels = False

    def set_kernels(self, on: bool) -> "Paraformer":
        """Run the compiled ops (True: every module raises where they are not built for its tensors' device) or
        the plain PyTorch reference everywhere (False). Resolve a user's None first with _ext.use_kernels."""
        self.kernels = bool(on)
        for m in self.modules():
            if hasattr(m, "kernels"):
                m.kernels = self.kernels
        return self

    def cast(self, dtype: torch.dtype) -> "Paraformer":
        """Encoder and decoder in `dtype`; the predictor stays float32 (CIF decisions need it, as in FunASR)."""
        self.encoder.to(dtype)
        self.decoder.to(dtype)
        if self.ctc is not None:
            self.ctc.to(dtype)
        self.predictor.float()
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.after_norm.weight.dtype

    def encode(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """features (B, T, input_size) float32, lengths (B,) → encoder output (B, T, d) in the model dtype."""
        return self.encoder(features, lengths)

    def decode_logits(self, encoder_out, encoder_lengths, acoustic_embeds, token_num, memory_mask=None) -> torch.Tensor:
        """(B, N, vocab) decoder logits in the model dtype. memory_mask: the decoder's (B, N, T) override."""
        return self.decoder(encoder_out, encoder_lengths, acoustic_embeds.to(self.dtype), token_num, memory_mask)

    @torch.no_grad()
    def decode_argmax(self, encoder_out, encoder_lengths, embeds, token_num, memory_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, N) int64, log-probability (B, N) float32) of the decoder's best token per position: greedy's
        decoding, and training's first pass before the GLM sampler (memory_mask: the decoder's override)."""
        if use_kernels(self.kernels, encoder_out.device):
            # the fused projection + log_softmax + argmax: the (B, N, vocab) logits are never written
            hidden = self.decoder.forward_hidden(encoder_out, encoder_lengths, embeds.to(self.dtype), token_num,
                                                 memory_mask)
            return out_proj_argmax(hidden, self.decoder.output_layer)  # nn.Linear or int8
        logits = self.decode_logits(encoder_out, encoder_lengths, embeds, token_num, memory_mask)
        best, ids = torch.log_softmax(logits.float(), dim=-1).max(dim=-1)
        return ids, best

    @torch.no_grad()
    def greedy(self, features: torch.Tensor, lengths: torch.Tensor, timer=None,
               log_posteriors: bool = False) -> GreedyOutput:
        """The whole inference path of FunASR's Paraformer.inference for a padded batch (spec §1.3),
        except that every item gets exactly its batch-1 result (see predictor.py).
        timer: optional object with mark(stage) called after "encoder", "predictor" and "decoder".
        log_posteriors: also return the decoder's (B, N, vocab) float32 log-posteriors (for a search over them,
        e.g. hotwords); the fused argmax, which never writes them, is then replaced by log_softmax + max."""
        mark = timer.mark if timer is not None else (lambda stage: None)
        lengths = lengths.to(features.device)
        enc = zero_padded_frames(self.encode(features, lengths), lengths)
        mark("encoder")
        pred = self.predictor(enc, lengths)
        mark("predictor")
        N = pred.acoustic_embeds.size(1)
        B = features.size(0)
        if N == 0:
            empty = torch.zeros(B, 0, dtype=torch.long, device=features.device)
            logp = torch.zeros(B, 0, self.cfg.vocab_size, device=features.device) if log_posteriors else None
            return GreedyOutput(empty, empty.float(), pred.token_num, enc, lengths, pred.alphas, pred.fires,
                                pred.acoustic_embeds, logp)
        logp = None
        if log_posteriors:
            logits = self.decode_logits(enc, lengths, pred.acoustic_embeds, pred.token_num)
            logp = torch.log_softmax(logits.float(), dim=-1)
            best, ids = logp.max(dim=-1)
        else:
            ids, best = self.decode_argmax(enc, lengths, pred.acoustic_embeds, pred.token_num)
        mark("decoder")
        return GreedyOutput(ids, best, pred.token_num, enc, lengths, pred.alphas, pred.fires, pred.acoustic_embeds, logp)


