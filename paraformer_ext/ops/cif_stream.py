"""Streaming CIF: FunASR's `CifPredictorV2.forward_chunk` (spec paraformer.md §3.6), the integrate-and-fire of
one chunk of encoder frames with the state a stream carries from its previous chunk.

Per stream b the loop runs over the slots

    slot 0           the carried state: weight carry_alpha[b], frame carry_hidden[b]
    slots 1 .. L     the chunk's frames t < L = lengths[b]: weight alphas[b, t], frame hidden[b, t]
    slot L + 1       only when is_final[b]: the tail, weight tail_threshold, a zero frame

with an integrate I (start 0) and an accumulated frame S (start 0), **in the compute dtype** (alphas' dtype:
float32 is FunASR's, every operation rounded as its 0-d tensor arithmetic rounds it, never fused):

    a + I < threshold:   I = I + a;  S = S + a·h
    otherwise (a fire):  S = S + (threshold − I)·h;  emit S;  I = I + a;  I = I − threshold;  S = I·h

After the last slot the new carried state is (I, S / I) when I > 0, else (I, S) (FunASR stores the frame
normalised, so slot 0 of the next chunk multiplies it back by I: S / I · I is not S bit for bit, and that is
what FunASR computes). This is not the offline `cif` (ops/cif.py): decisions are the float32 running sum, the
remainder after a fire is I − threshold (not I − 1), and a stream never loses its remainder between chunks.

Shapes and dtypes (one signature for `cif_stream_ref`, `cif_stream_fn` and the op):
    hidden (B, T, D) float32 / float64 / float16 / bfloat16 (read as the compute dtype);
    alphas (B, T) float32 or float64: the compute dtype; lengths (B,) int64 in [0, T];
    carry_alpha (B,) and carry_hidden (B, D) in the compute dtype; is_final (B,) bool;
    threshold, tail_threshold: floats (cast to the compute dtype).
Returns (embeds (B, N, D) in hidden's dtype, zero past token_num[b]; token_num (B,) int64; fire_slots (B, N)
int64, the slot of each token's fire as numbered above, −1 padded; carry_alpha (B,), carry_hidden (B, D) in the
compute dtype), N = max token_num (0 when nothing fires).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .._ext import has_kernels, use_kernels


class CifStreamOutput(NamedTuple):
    embeds: torch.Tensor  # (B, N, D) hidden's dtype
    token_num: torch.Tensor  # (B,) int64
    fire_slots: torch.Tensor  # (B, N) int64, -1 padded (slot 0 = carried state, t + 1 = frame t, L + 1 = tail)
    carry_alpha: torch.Tensor  # (B,) compute dtype
    carry_hidden: torch.Tensor  # (B, D) compute dtype


_HIDDEN_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check(hidden, alphas, lengths, carry_alpha, carry_hidden, is_final):
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be (B, T, D), got shape {tuple(hidden.shape)}")
    B, T, D = hidden.shape
    if alphas.shape != (B, T):
        raise ValueError(f"alphas must be (B, T) = ({B}, {T}), got {tuple(alphas.shape)}")
    if alphas.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"alphas must be float32 or float64 (the compute dtype), got {alphas.dtype}")
    if hidden.dtype not in _HIDDEN_DTYPES:
        raise TypeError(f"hidden must be float32/float64/float16/bfloat16, got {hidden.dtype}")
    if lengths.shape != (B,) or lengths.dtype != torch.int64:
        raise ValueError(f"lengths must be (B,) = ({B},) int64, got {lengths.dtype} {tuple(lengths.shape)}")
    if carry_alpha.shape != (B,) or carry_alpha.dtype != alphas.dtype:
        raise ValueError(f"carry_alpha must be (B,) = ({B},) {alphas.dtype}, got {carry_alpha.dtype} {tuple(carry_alpha.shape)}")
    if carry_hidden.shape != (B, D) or carry_hidden.dtype != alphas.dtype:
        raise ValueError(f"carry_hidden must be (B, D) = ({B}, {D}) {alphas.dtype}, got {carry_hidden.dtype} "
                         f"{tuple(carry_hidden.shape)}")
    if is_final.shape != (B,) or is_final.dtype != torch.bool:
        raise ValueError(f"is_final must be (B,) = ({B},) bool, got {is_final.dtype} {tuple(is_final.shape)}")
    if B and (int(lengths.min()) < 0 or int(lengths.max()) > T):
        raise ValueError(f"lengths must be in [0, T={T}], got {lengths.tolist()}")


def cif_stream_ref(hidden: torch.Tensor, alphas: torch.Tensor, lengths: torch.Tensor, carry_alpha: torch.Tensor,
                   carry_hidden: torch.Tensor, is_final: torch.Tensor, threshold: float = 1.0,
                   tail_threshold: float = 0.0) -> CifStreamOutput:
    """FunASR's forward_chunk loop, written as plainly as it is (a Python loop over 0-d tensors in the compute
    dtype). Shapes in the module docstring."""
    _check(hidden, alphas, lengths, carry_alpha, carry_hidden, is_final)
    B, T, D = hidden.shape
    ct = alphas.dtype
    thr = torch.tensor(threshold, dtype=ct)
    tail = torch.tensor(tail_threshold, dtype=ct)
    h_all = hidden.detach().to("cpu", ct)
    a_all = alphas.detach().cpu()
    emitted, slots_out, new_a, new_h = [], [], [], []
    for b in range(B):
        L = int(lengths[b])
        weights = [carry_alpha[b].detach().cpu()] + [a_all[b, t] for t in range(L)]
        frames = [carry_hidden[b].detach().cpu()] + [h_all[b, t] for t in range(L)]
        if bool(is_final[b]):
            weights.append(tail)
            frames.append(torch.zeros(D, dtype=ct))
        integrate = torch.zeros((), dtype=ct)
        acc = torch.zeros(D, dtype=ct)
        out, where = [], []
        for s, (a, h) in enumerate(zip(weights, frames)):
            if bool(a + integrate < thr):
                integrate = integrate + a
                acc = acc + a * h
            else:
                acc = acc + (thr - integrate) * h
                out.append(acc)
                where.append(s)
                integrate = integrate + a
                integrate = integrate - thr
                acc = integrate * h
        new_a.append(integrate)
        new_h.append(acc / integrate if bool(integrate > 0) else acc)
        emitted.append(out)
        slots_out.append(where)
    N = max((len(o) for o in emitted), default=0)
    embeds = torch.zeros(B, N, D, dtype=ct)
    fire_slots = torch.full((B, N), -1, dtype=torch.int64)
    for b in range(B):
        for k, (e, s) in enumerate(zip(emitted[b], slots_out[b])):
            embeds[b, k] = e
            fire_slots[b, k] = s
    dev = hidden.device
    token_num = torch.tensor([len(o) for o in emitted], dtype=torch.int64)
    ca = torch.stack(new_a) if B else torch.zeros(0, dtype=ct)
    ch = torch.stack(new_h) if B else torch.zeros(0, D, dtype=ct)
    return CifStreamOutput(embeds.to(dev, hidden.dtype), token_num.to(dev), fire_slots.to(dev), ca.to(dev), ch.to(dev))


# --- the compiled op -------------------------------------------------------------------------------------------


def _op_available() -> bool:
    return has_kernels() and hasattr(torch.ops.paraformer_ext, "cif_stream")


if _op_available():

    @torch.library.register_fake("paraformer_ext::cif_stream")
    def _cif_stream_fake(hidden, alphas, lengths, carry_alpha, carry_hidden, is_final, threshold, tail_threshold):
        torch._check(hidden.dim() == 3, lambda: "hidden must be (B, T, D)")
        B, T, D = hidden.shape
        N = torch.library.get_ctx().new_dynamic_size()
        return (hidden.new_empty((B, N, D)), hidden.new_empty((B,), dtype=torch.int64),
                hidden.new_empty((B, N), dtype=torch.int64), alphas.new_empty((B,)), alphas.new_empty((B, D)))


def cif_stream_fn(hidden: torch.Tensor, alphas: torch.Tensor, lengths: torch.Tensor, carry_alpha: torch.Tensor,
                  carry_hidden: torch.Tensor, is_final: torch.Tensor, threshold: float = 1.0,
                  tail_threshold: float = 0.0) -> CifStreamOutput:
    """The compiled op (csrc/cif_stream_cpu.cpp, cif_stream_cuda.cu); same signature and bits as
    `cif_stream_ref`. Inference only (no autograd)."""
    if not _op_available():
        from .._ext import KernelsUnavailableError

        raise KernelsUnavailableError("the compiled extension has no cif_stream op; rebuild it with "
                                      "`pip install --no-build-isolation -e .`")
    return CifStreamOutput(*torch.ops.paraformer_ext.cif_stream(hidden, alphas, lengths, carry_alpha, carry_hidden,
                                                                is_final, float(threshold), float(tail_threshold)))


def cif_stream(hidden, alphas, lengths, carry_alpha, carry_hidden, is_final, threshold: float = 1.0,
               tail_threshold: float = 0.0, *, kernels: bool | None = None) -> CifStreamOutput:
    """`cif_stream_fn` or `cif_stream_ref`, chosen by `kernels` for hidden's device (_ext.use_kernels)."""
    if use_kernels(kernels, hidden.device):
        return cif_stream_fn(hidden, alphas, lengths, carry_alpha, carry_hidden, is_final, threshold, tail_threshold)
    return cif_stream_ref(hidden, alphas, lengths, carry_alpha, carry_hidden, is_final, threshold, tail_threshold)
