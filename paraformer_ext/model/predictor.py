"""CifPredictorV2 (spec paraformer.md §3.1, §3.3): alphas = sigmoid(Linear(ReLU(Conv1d_k(h)))), then CIF.

Always computed in float32 or better, as FunASR does (autocast off), whatever the encoder's dtype.
Differences from FunASR's padded batches, on purpose (every item gets its batch-1 result):
* padded encoder frames are zeroed before the size-(l+r+1) convolution, so the last valid frame's alpha
  sees the same zero padding as in batch 1 (FunASR reads a padded-position encoder output there);
* the tail weight goes to each item's own end and multiplies a zero frame (FunASR multiplies
  encoder_out[b, len_b], again a padded-position output).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.cif import cif, rescale_alphas
from .config import PredictorConfig
from ..masks import length_mask


class PredictorOutput(NamedTuple):
    acoustic_embeds: torch.Tensor  # (B, N, D) in the hidden's dtype
    token_num: torch.Tensor  # (B,) int64
    alphas: torch.Tensor  # (B, T+1) float32 with the tail slot at each item's own length (inference), else (B, T)
    fires: torch.Tensor  # (B, T+1) or (B, T): the CIF integrate before reset, per frame


class CifPredictorV2(nn.Module):
    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        self.cfg = cfg
        self.cif_conv1d = nn.Conv1d(cfg.idim, cfg.idim, cfg.l_order + cfg.r_order + 1)
        self.cif_output = nn.Linear(cfg.idim, 1)
        self.kernels = False
        self.threshold_mode = "tail"  # inference: FunASR's tail weight, or the paper's dynamic threshold

    def alphas(self, hidden: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """hidden (B, T, D) → alphas (B, T) float32, zero past each length."""
        dtype = self.cif_output.weight.dtype
        mask = length_mask(lengths, hidden.size(1), hidden.device)
        h = hidden.to(dtype)
        if mask is not None:
            h = h.masked_fill(~mask[:, :, None], 0.0)
        x = F.pad(h.transpose(1, 2), (self.cfg.l_order, self.cfg.r_order))
        x = torch.relu(self.cif_conv1d(x)).transpose(1, 2)
        # in the weights' dtype even under autocast (bf16 training): CIF integrates alphas in float32 or float64
        a = torch.sigmoid(self.cif_output(x).to(dtype))
        a = torch.relu(a * self.cfg.smooth_factor - self.cfg.noise_threshold).squeeze(-1)
        if mask is not None:
            a = a * mask.to(a.dtype)
        return a

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor | None, target_lengths: torch.Tensor | None = None) -> PredictorOutput:
        return self.integrate(hidden, self.alphas(hidden, lengths), lengths, target_lengths)

    def integrate(self, hidden: torch.Tensor, alphas: torch.Tensor, lengths: torch.Tensor | None,
                  target_lengths: torch.Tensor | None = None) -> PredictorOutput:
        """CIF of hidden (B, T, D) with these alphas (B, T) (forward's, or the streaming training's, computed per
        chunk): rescaled to target_lengths when given (training), else the inference threshold mode."""
        B, T = alphas.shape
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=hidden.device)
        if target_lengths is None and self.threshold_mode == "dynamic":
            return self._dynamic(hidden, alphas, lengths)
        tail = self.cfg.tail_threshold if target_lengths is None else 0.0
        # the compiled op, or the reference: the plain float64 loop of spec §3.4 (cif_ref), the oracle the op is
        # tested against; both give FunASR's fires on the goldens (tests/test_parity.py)
        out = cif(hidden.to(alphas.dtype), alphas, self.cfg.threshold, lengths, tail, target_lengths, kernels=self.kernels)
        if tail > 0:
            # alphas with the tail slot, as FunASR's tail_process_fn returns them (timestamps read them)
            full = torch.zeros(B, T + 1, dtype=alphas.dtype, device=alphas.device)
            full[:, :T] = alphas
            full[torch.arange(B, device=alphas.device), lengths.to(alphas.device)] += torch.tensor(tail, dtype=alphas.dtype)
            alphas = full
        return PredictorOutput(out.acoustic_embeds, out.token_num, alphas, out.fires)

    def _dynamic(self, hidden: torch.Tensor, alphas: torch.Tensor, lengths: torch.Tensor) -> PredictorOutput:
        """The paper's dynamic threshold (§2.2): fire at β = Σα / ⌈Σα⌉ instead of 1, so the ⌈Σα⌉-th token
        always fires. Integrating α against β is integrating α/β against 1, which is the training-time
        rescale to a target of ⌈Σα⌉ (cif with target_lengths): the same code, and embeddings whose weights sum
        to 1 as in training. Alphas and fires get a zero slot after the last frame, the shape the timestamps
        expect from the tail method."""
        scaled, _ = rescale_alphas(alphas, torch.ceil(alphas.double().sum(-1)).to(torch.int64), lengths)
        out = cif(hidden.to(alphas.dtype), scaled, 1.0, lengths, 0.0, kernels=self.kernels)
        return PredictorOutput(out.acoustic_embeds, out.token_num, F.pad(scaled, (0, 1)), F.pad(out.fires, (0, 1)))
