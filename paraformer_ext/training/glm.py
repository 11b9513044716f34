"""FunASR's GLM sampler (spec training.md §2, paraformer.md §2.1): after a first decoder pass on the acoustic
embeddings, some positions of the second pass take the embedding of the target token instead.

For utterance b with seq_len valid target positions (eos included when predictor_bias = 1) and a Hamming
distance d between the first pass's argmax and the target, target_num = ⌊d · sampling_ratio⌋ (float32 product,
truncated, as FunASR's `.long()`), and the positions are the first target_num entries of a random permutation of
**all** valid positions (`randperm(seq_len)[:target_num]`), not only the wrong ones.
"""
from __future__ import annotations

from typing import Sequence

import torch


def glm_target_num(first_pass_ids: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor,
                   sampling_ratio: float) -> torch.Tensor:
    """How many positions of each utterance take the target embedding.

    first_pass_ids: (B, L) argmax of the first pass; targets: (B, L) ids, padded with anything past
    target_lengths (B,). Returns (B,) int64 = ⌊(target_lengths − correct) · sampling_ratio⌋.
    """
    L = targets.size(1)
    valid = torch.arange(L, device=targets.device)[None, :] < target_lengths[:, None]
    same = ((first_pass_ids == targets) & valid).sum(1)
    # FunASR multiplies in float32 and truncates; a float64 product could round differently for ratios like 0.4
    return ((target_lengths - same).to(torch.float32) * sampling_ratio).long()


def glm_mask(target_num: torch.Tensor, target_lengths: torch.Tensor, L: int, *,
             positions: Sequence[torch.Tensor] | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, L) bool, True where the target embedding replaces the acoustic one.

    positions: per utterance, distinct positions in [0, target_lengths[b]) in priority order; the first
    target_num[b] are taken (pass FunASR's whole `randperm(seq_len)` to reproduce its draw). Without it each
    utterance with target_num > 0 draws `torch.randperm(seq_len, generator=generator)` on the CPU, in batch
    order, exactly as FunASR does with the global RNG (generator=None uses that same global RNG).
    """
    B = target_num.size(0)
    counts = target_num.tolist()
    lens = target_lengths.tolist()
    if positions is not None and len(positions) != B:
        raise ValueError(f"glm_positions must hold one tensor per utterance ({B}), got {len(positions)}")
    mask = torch.zeros(B, L, dtype=torch.bool)
    for b in range(B):
        n = counts[b]
        if n <= 0:
            continue  # FunASR draws no permutation for this utterance: the RNG is not advanced
        if positions is None:
            chosen = torch.randperm(lens[b], generator=generator)[:n]
        else:
            chosen = _check_positions(torch.as_tensor(positions[b]).flatten().cpu(), n, lens[b], b)
        mask[b, chosen] = True
    return mask.to(target_num.device)


def _check_positions(p: torch.Tensor, n: int, seq_len: int, b: int) -> torch.Tensor:
    if p.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"glm_positions[{b}] must be an integer tensor, got {p.dtype}")
    if p.numel() < n:
        raise ValueError(
            f"glm_positions[{b}] has {p.numel()} positions but the sampler needs {n} "
            f"(⌊Hamming distance · sampling_ratio⌋); pass the whole permutation, e.g. FunASR's randperm({seq_len})"
        )
    chosen = p[:n].long()
    if n and (bool((chosen < 0).any()) or bool((chosen >= seq_len).any())):
        raise ValueError(f"glm_positions[{b}] must lie in [0, {seq_len}) (the utterance's target length incl. eos), "
                         f"got {chosen.tolist()}")
    if chosen.unique().numel() != n:
        raise ValueError(f"glm_positions[{b}] repeats a position among its first {n}: {chosen.tolist()}")
    return chosen


def glm_embeds(acoustic_embeds: torch.Tensor, target_embeds: torch.Tensor, mask: torch.Tensor,
               target_lengths: torch.Tensor) -> torch.Tensor:
    """The second pass's input: target embeddings where mask, acoustic ones elsewhere, zero past each
    target length. acoustic_embeds, target_embeds: (B, L, d); mask: (B, L) bool → (B, L, d)."""
    L = mask.size(1)
    valid = torch.arange(L, device=mask.device)[None, :] < target_lengths[:, None]
    out = torch.where(mask[..., None], target_embeds.to(acoustic_embeds.dtype), acoustic_embeds)
    return out * valid[..., None].to(out.dtype)
