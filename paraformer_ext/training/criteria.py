"""FunASR's two training criteria (spec paraformer.md §1.2): label-smoothed cross-entropy in its KL form
(funasr/losses/label_smoothing_loss.py) and the predictor's token-count MAE (cif_predictor.py `mae_loss`)."""
from __future__ import annotations

import math

import torch


def label_smoothing_loss(logits: torch.Tensor, targets: torch.Tensor, smoothing: float, normalize_length: bool,
                         ignore_id: int = -1) -> torch.Tensor:
    """Σ over non-ignored positions of KL(q ‖ softmax(logits)), divided by their count (normalize_length) or by B.

    q puts 1 − s on the target and s / (V − 1) on every other class. logits: (B, L, V) any float dtype (computed
    in float32, as FunASR's fp32 model); targets: (B, L) int64 with ignore_id at padding. Returns a 0-dim float32.

    The KL is taken in closed form, Σ_v q_v log q_v − (1 − s − s/(V−1)) log p_y − s/(V−1) Σ_v log p_v, so no
    (B·L, V) target distribution is ever built; it equals FunASR's element-wise KLDivLoss up to float32 rounding
    (its gradient, softmax − q, is the same).
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"logits must be (B, L, V) and targets (B, L); got {tuple(logits.shape)} and {tuple(targets.shape)}")
    B, _, V = logits.shape
    if V < 2:
        raise ValueError(f"label smoothing needs at least 2 classes, got V = {V}")
    valid = targets != ignore_id
    total = int(valid.sum())
    logp = torch.log_softmax(logits.float(), dim=-1)
    conf, off = 1.0 - smoothing, smoothing / (V - 1)
    # Σ_v q_v log q_v with 0·log 0 = 0 (smoothing 0 is plain cross-entropy)
    entropy = (conf * math.log(conf) if conf > 0 else 0.0) + ((V - 1) * off * math.log(off) if off > 0 else 0.0)
    logp_y = logp.gather(-1, targets.clamp_min(0)[..., None]).squeeze(-1)
    kl = entropy - (conf - off) * logp_y - off * logp.sum(-1)
    kl = torch.where(valid, kl, torch.zeros((), dtype=kl.dtype, device=kl.device))
    denom = total if normalize_length else B
    if denom == 0:
        raise ValueError("label_smoothing_loss: no target token to normalise by (every target is padding)")
    return kl.sum() / denom


def mae_loss(target_lengths: torch.Tensor, predicted_lengths: torch.Tensor, normalize_length: bool) -> torch.Tensor:
    """Σ_b |target_lengths − predicted_lengths| divided by Σ target_lengths (normalize_length) or by B.

    target_lengths: (B,) ints (eos included when predictor_bias = 1); predicted_lengths: (B,) float, the
    *unscaled* Σα of the predictor. Returns a 0-dim tensor in predicted_lengths' dtype.
    """
    t = target_lengths.to(predicted_lengths.dtype)
    denom = t.sum() if normalize_length else target_lengths.numel()
    return (t - predicted_lengths).abs().sum() / denom
