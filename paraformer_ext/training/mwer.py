"""MWER with negative sampling (paper §2.4; ../shared/spec/training.md §3 defines every choice the paper leaves
open, and each is a switch of MwerConfig).

Greedy decoding of a non-autoregressive decoder gives one path; the paper makes several candidate paths by
replacing top-1 tokens with top-2 tokens at random, scores each candidate by the log-probability the decoder
gives it, and minimises the expected number of errors under the candidates' renormalised probabilities, with the
candidates' mean error subtracted (so only differences between candidates teach):

    S[n, b] = Σ_l log_softmax(z)[b, l, c[n, b, l]]      (scored positions: valid, eos excluded by default)
    P̂[n, b] = softmax_n(S[:, b])
    L_b     = Σ_n P̂[n, b] · (W[n, b] − mean_n W[:, b])   W = errors of candidate n against the target

Gradient reaches the logits only through the gathered log-probabilities; candidates and errors are constants.
∂L_b/∂S[n, b] = P̂_n · (W_n − Σ_k P̂_k W_k): a candidate gains probability when it has fewer errors than the
current expectation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..metrics import edit_distance

SPECIAL_IDS = (0, 1, 2)  # <blank>, <s>, </s>: dropped before a Levenshtein distance, as FunASR's text output drops them


@dataclass(frozen=True)
class MwerConfig:
    """n_candidates: paths per utterance; p_mask: Bernoulli chance that a position takes its top-2 token
    (sampler "bernoulli"); sampler "k_flip": exactly k positions flipped, k uniform in 1..min(3, length);
    include_greedy: candidate 0 is the greedy path itself; error: "hamming" (position by position against the
    target) or "levenshtein" (edit distance after dropping ids 0, 1, 2); exclude_eos: the last valid position
    (the eos slot of Paraformer's targets) neither scores nor counts; normalize_length: divide the summed loss by
    the number of target tokens (as the CE with length_normalized_loss), else by the batch size. In
    training.compute_loss: loss = ce_weight · L_CE + predictor_weight · L_MAE + weight · L_MWER (the spec's γ and
    w_mwer; an MWER fine-tuning stage uses 1 and 1)."""

    n_candidates: int = 4
    p_mask: float = 0.5
    sampler: str = "bernoulli"
    include_greedy: bool = False
    error: str = "hamming"
    exclude_eos: bool = True
    normalize_length: bool = True
    weight: float = 1.0
    ce_weight: float = 1.0

    def __post_init__(self):
        problems = []
        if not (isinstance(self.n_candidates, int) and self.n_candidates >= 2):
            problems.append(f"n_candidates must be an int >= 2 (MWER compares paths), got {self.n_candidates!r}")
        if not 0.0 <= self.p_mask <= 1.0:
            problems.append(f"p_mask must be in [0, 1], got {self.p_mask!r}")
        if self.sampler not in ("bernoulli", "k_flip"):
            problems.append(f"sampler must be 'bernoulli' or 'k_flip', got {self.sampler!r}")
        if self.error not in ("hamming", "levenshtein"):
            problems.append(f"error must be 'hamming' or 'levenshtein', got {self.error!r}")
        if problems:
            raise ValueError("invalid MWER config: " + "; ".join(problems))


class MwerOutput(NamedTuple):
    loss: torch.Tensor  # () float32: the reduced MWER loss
    mean_errors: torch.Tensor  # () float32: mean W over candidates and utterances (logged)
    min_errors: torch.Tensor  # () float32: mean over utterances of the best candidate's W (logged)
    candidates: torch.Tensor  # (N, B, L) int64 candidate ids (pads keep the greedy id)
    errors: torch.Tensor  # (N, B) float32 W
    scores: torch.Tensor  # (N, B) float32 S, differentiable


def scored_mask(lengths: torch.Tensor, L: int, exclude_eos: bool) -> torch.Tensor:
    """(B, L) bool: the positions that score and count (valid ones, minus the eos slot when asked)."""
    n = lengths - 1 if exclude_eos else lengths
    return torch.arange(L, device=lengths.device)[None, :] < n.clamp_min(0)[:, None]


def sample_candidates(top2: torch.Tensor, mask: torch.Tensor, cfg: MwerConfig,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """top2 (B, L, 2) int64 (top-1, top-2 ids), mask (B, L) bool → candidates (N, B, L): each scored position
    takes top-1 or top-2, unscored positions top-1. Reproducible given `generator` (CPU draws, any device)."""
    B, L, _ = top2.shape
    N = cfg.n_candidates
    if cfg.sampler == "bernoulli":
        flip = torch.rand((N, B, L), generator=generator) < cfg.p_mask
    else:
        flip = torch.zeros((N, B, L), dtype=torch.bool)
        counts = mask.sum(1).cpu()
        for b in range(B):
            n_b = int(counts[b])
            if n_b == 0:
                continue
            pos = mask[b].nonzero().flatten().cpu()
            for n in range(N):
                k = int(torch.randint(1, min(3, n_b) + 1, (1,), generator=generator))
                flip[n, b, pos[torch.randperm(n_b, generator=generator)[:k]]] = True
    flip = flip.to(mask.device) & mask[None]
    if cfg.include_greedy:
        flip[0] = False
    return torch.where(flip, top2[None, :, :, 1], top2[None, :, :, 0])


def candidate_errors(cands: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, error: str) -> torch.Tensor:
    """W (N, B) float32: errors of each candidate (N, B, L) against target (B, L) over the scored positions."""
    if error == "hamming":
        return ((cands != target[None]) & mask[None]).sum(-1).float()
    N, B, _ = cands.shape
    c, t, m = cands.cpu(), target.cpu(), mask.cpu()
    out = torch.zeros(N, B)
    for b in range(B):
        ref = [i for i in t[b][m[b]].tolist() if i not in SPECIAL_IDS]
        for n in range(N):
            out[n, b] = edit_distance([i for i in c[n, b][m[b]].tolist() if i not in SPECIAL_IDS], ref)
    return out.to(cands.device)


def mwer_from_scores(scores: torch.Tensor, errors: torch.Tensor) -> torch.Tensor:
    """L_b (B,) = Σ_n softmax_n(S)[n, b] · (W[n, b] − mean_n W[:, b]); scores (N, B) carry the gradient."""
    p = torch.softmax(scores, dim=0)
    return (p * (errors - errors.mean(0, keepdim=True))).sum(0)


def mwer_loss(logits: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor, cfg: MwerConfig | None = None,
              generator: torch.Generator | None = None) -> MwerOutput:
    """MWER with negative sampling.

    logits: (B, L, V) decoder logits of the pass that carries gradient (any float dtype; computed in float32);
    target: (B, L) int64 ids padded with -1 (Paraformer's targets with eos appended); lengths: (B,) valid
    positions (eos included). Returns MwerOutput; `loss` is differentiable w.r.t. logits.
    """
    cfg = cfg or MwerConfig()
    if logits.dim() != 3 or target.shape != logits.shape[:2]:
        raise ValueError(f"logits must be (B, L, V) and target (B, L); got {tuple(logits.shape)} and {tuple(target.shape)}")
    B, L, V = logits.shape
    if V < 2:
        raise ValueError(f"MWER needs a vocabulary of at least 2 tokens (top-1 and top-2), got V = {V}")
    lengths = lengths.to(logits.device)
    mask = scored_mask(lengths, L, cfg.exclude_eos)
    lp = torch.log_softmax(logits.float(), dim=-1)
    with torch.no_grad():
        top2 = lp.topk(2, dim=-1).indices
        cands = sample_candidates(top2, mask, cfg, generator)
        errors = candidate_errors(cands, target, mask, cfg.error)
    picked = lp[None].expand(cfg.n_candidates, -1, -1, -1).gather(-1, cands[..., None]).squeeze(-1)
    scores = torch.where(mask[None], picked, picked.new_zeros(())).sum(-1)
    per_utt = mwer_from_scores(scores, errors)
    denom = lengths.sum().clamp_min(1).float() if cfg.normalize_length else float(max(B, 1))
    return MwerOutput(per_utt.sum() / denom, errors.mean(), errors.min(0).values.mean(), cands, errors, scores)
