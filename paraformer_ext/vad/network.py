"""The FSMN-VAD network (spec fsmn_vad.md §3): 400-dim LFR features → 248-class softmax per 10 ms frame.

    in_linear1 (affine) → in_linear2 (affine) → ReLU
    → N × [linear (no bias) → causal FSMN memory (p[t] + Σ_k w[:, k] ⊙ p[t − (K−1) + k]) → affine → ReLU]
    → out_linear1 (affine) → out_linear2 (affine) → softmax

The memory blocks run on paraformer_ext's FSMN op (`ops.fsmn.fsmn_memory`, left = K − 1). Each block keeps
the last K − 1 projected frames as its streaming cache, so evaluating a file in pieces gives exactly the
one-shot result while memory stays bounded by the piece size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import ModelLoadError, load_state_dict_strict
from ..ops.fsmn import fsmn_memory

__all__ = ["FsmnVadEncoder", "EncoderConfig"]

_ENCODER_DEFAULTS = dict(
    input_dim=400,
    input_affine_dim=140,
    fsmn_layers=4,
    linear_dim=250,
    proj_dim=128,
    lorder=20,
    rorder=0,
    lstride=1,
    rstride=0,
    output_affine_dim=140,
    output_dim=248,
    use_softmax=True,
)
EncoderConfig = dict  # config.yaml `encoder_conf`


class _Affine(nn.Module):
    # FunASR wraps each nn.Linear in a module with a `.linear` attribute; keep it for the state_dict keys.
    def __init__(self, d_in: int, d_out: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out, bias=bias)


class _ConvLeft(nn.Module):
    # Holds FunASR's depthwise Conv2d weight (D, 1, K, 1) as loaded; the op reads it as (D, K).
    def __init__(self, dim: int, order: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim, 1, order, 1))


class _MemoryBlock(nn.Module):
    def __init__(self, dim: int, order: int):
        super().__init__()
        self.conv_left = _ConvLeft(dim, order)


class _FsmnLayer(nn.Module):
    def __init__(self, linear_dim: int, proj_dim: int, lorder: int):
        super().__init__()
        self.linear = _Affine(linear_dim, proj_dim, bias=False)
        self.fsmn_block = _MemoryBlock(proj_dim, lorder)
        self.affine = _Affine(proj_dim, linear_dim)


class FsmnVadEncoder(nn.Module):
    """FunASR's `FSMN` encoder (registered "FSMN") with the fsmn-vad configuration by default.

    Its state_dict keys are FunASR's without the `encoder.` prefix (see `load_funasr_state_dict`).
    `kernels=False` runs the FSMN memory on the plain-PyTorch reference instead of the compiled op.
    """

    def __init__(self, kernels: bool = True, **encoder_conf):
        super().__init__()
        unknown = set(encoder_conf) - set(_ENCODER_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown encoder_conf keys for the FSMN VAD: {sorted(unknown)}")
        c = {**_ENCODER_DEFAULTS, **encoder_conf}
        if c["rorder"] != 0 or c["lstride"] != 1:
            raise NotImplementedError(
                f"only the causal FSMN VAD (rorder 0, lstride 1) is supported, got rorder={c['rorder']} "
                f"lstride={c['lstride']}"
            )
        if c["lorder"] < 1:
            raise ValueError(f"lorder must be >= 1, got {c['lorder']}")
        self.conf = c
        self.kernels = kernels
        self.lorder = int(c["lorder"])
        self.proj_dim = int(c["proj_dim"])
        self.input_dim = int(c["input_dim"])
        self.output_dim = int(c["output_dim"])
        self.use_softmax = bool(c["use_softmax"])
        self.in_linear1 = _Affine(c["input_dim"], c["input_affine_dim"])
        self.in_linear2 = _Affine(c["input_affine_dim"], c["linear_dim"])
        self.fsmn = nn.ModuleList(_FsmnLayer(c["linear_dim"], c["proj_dim"], self.lorder) for _ in range(c["fsmn_layers"]))
        self.out_linear1 = _Affine(c["linear_dim"], c["output_affine_dim"])
        self.out_linear2 = _Affine(c["output_affine_dim"], c["output_dim"])

    @property
    def cache_frames(self) -> int:
        """Frames of history each memory block keeps between pieces (K − 1)."""
        return self.lorder - 1

    def init_cache(self, batch: int = 1, device=None, dtype=None) -> list[torch.Tensor]:
        """Zero streaming state: one (B, K − 1, proj_dim) tensor per FSMN layer (the start of a file)."""
        p = self.in_linear1.linear.weight
        return [
            torch.zeros(batch, self.cache_frames, self.proj_dim, device=device or p.device, dtype=dtype or p.dtype)
            for _ in self.fsmn
        ]

    def forward(
        self, feats: torch.Tensor, cache: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """feats: (B, T, input_dim) float32; cache: from `init_cache` or the previous call (None = start).

        Returns (scores (B, T, output_dim) — softmax posteriors, new cache). Frames are causal: frame t's
        scores depend on frames ≤ t only, so splitting a sequence into pieces and threading the cache
        through gives the one-shot result.
        """
        if feats.dim() != 3 or feats.size(-1) != self.input_dim:
            raise ValueError(f"feats must be (B, T, {self.input_dim}), got {tuple(feats.shape)}")
        B = feats.size(0)
        if cache is None:
            cache = self.init_cache(B, feats.device, feats.dtype)
        elif len(cache) != len(self.fsmn):
            raise ValueError(f"cache has {len(cache)} tensors, the network has {len(self.fsmn)} FSMN layers")
        k = self.cache_frames
        x = self.in_linear1.linear(feats)
        x = F.relu(self.in_linear2.linear(x))
        new_cache = []
        for layer, c in zip(self.fsmn, cache):
            p = layer.linear.linear(x)  # (B, T, P)
            if c.shape != (B, k, self.proj_dim):
                raise ValueError(f"cache tensor must be {(B, k, self.proj_dim)}, got {tuple(c.shape)}")
            # The memory looks K − 1 frames back: prepend the cached history, drop its outputs afterwards.
            pc = torch.cat([c.to(p.dtype), p], dim=1) if k else p
            w = layer.fsmn_block.conv_left.weight[:, 0, :, 0]  # (P, K); tap K−1 is the current frame
            m = fsmn_memory(pc, w, None, left=k, kernels=self.kernels)[:, k:]
            new_cache.append(pc[:, pc.size(1) - k :].clone() if k else c)
            x = F.relu(layer.affine.linear(m))
        x = self.out_linear1.linear(x)
        x = self.out_linear2.linear(x)
        if self.use_softmax:
            x = torch.softmax(x, dim=-1)
        return x, new_cache

    def load_funasr_state_dict(self, state: dict, prefix: str = "encoder.") -> None:
        """Load FunASR's model.pt state_dict strictly (checkpoint.load_state_dict_strict): every key present
        under `prefix`, none extra, every shape equal, every tensor floating point.

        Raises ModelLoadError (a ValueError) naming the offending keys otherwise.
        """
        for k, v in state.items():
            if not torch.is_floating_point(v):
                raise ModelLoadError(f"fsmn-vad model.pt: tensor {k} has dtype {v.dtype}, expected floating point; "
                                     "is it FunASR's fsmn-vad checkpoint?")
        load_state_dict_strict(self, state, "the fsmn-vad model.pt", prefix)
