"""The valid frames of a padded batch: the one rule every module masks padding with.

Its own module, importing nothing of the package, because the frontend, the model and the ops all need it
and none of them should import another for it.
"""
from __future__ import annotations

import torch


def length_mask(lengths: torch.Tensor | None, T: int, device: torch.device | str | None = None) -> torch.Tensor | None:
    """(B, T) bool, True at frames t < lengths[b]; None when lengths is None (nothing is padded).

    lengths: (B,) integer tensor; device: where the mask is made (default lengths' device; lengths are moved).
    """
    if lengths is None:
        return None
    if device is not None:
        lengths = lengths.to(device)
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]
