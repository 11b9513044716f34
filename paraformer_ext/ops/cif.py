"""TEMPORARY minimal CIF reference (replaced by the CIF op branch)."""
from __future__ import annotations

from typing import NamedTuple

import torch


class CifOutput(NamedTuple):
    acoustic_embeds: torch.Tensor
    token_num: torch.Tensor
    fires: torch.Tensor


def cif(hidden, alphas, threshold=1.0, lengths=None, tail_threshold=0.0, target_lengths=None, kernels=True):
    B, T, D = hidden.shape
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.long)
    lengths = lengths.cpu()
    tail = tail_threshold > 0 and target_lengths is None
    Tout = T + 1 if tail else T
    fires = torch.zeros(B, Tout, dtype=alphas.dtype)
    embs = []
    for b in range(B):
        L = int(lengths[b])
        a = alphas[b, :L].double().cpu().tolist()
        h = hidden[b, :L].double().cpu()
        if target_lengths is not None:
            s = sum(a)
            a = [x * float(target_lengths[b]) / s for x in a]
        if tail:
            a = a + [tail_threshold]
            h = torch.cat([h, torch.zeros(1, D, dtype=h.dtype)])
        integrate = 0.0
        frame = torch.zeros(D, dtype=torch.float64)
        rows = []
        for t, al in enumerate(a):
            dist = 1.0 - integrate
            integrate += al
            fires[b, t] = integrate
            if integrate >= threshold:
                integrate -= 1.0
                frame = frame + dist * h[t]
                rows.append(frame)
                frame = (al - dist) * h[t]
            else:
                frame = frame + al * h[t]
        embs.append(rows)
    N = max([len(r) for r in embs] + [0])
    out = torch.zeros(B, N, D, dtype=hidden.dtype)
    for b, rows in enumerate(embs):
        for k, r in enumerate(rows):
            out[b, k] = r.to(hidden.dtype)
    tn = torch.tensor([len(r) for r in embs], dtype=torch.long)
    return CifOutput(out.to(hidden.device), tn.to(hidden.device), fires.to(hidden.device))
