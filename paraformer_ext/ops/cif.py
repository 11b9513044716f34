"""CIF, continuous integrate-and-fire (spec paraformer.md §3.1, §3.3-3.5): the predictor's step from encoder
frames to one acoustic embedding per token.

For one utterance with weights α_t (the predictor's sigmoid outputs) over its frames t < len, CIF keeps an
integrate I (start 0) and runs the sequential loop of §3.4, with the fire decisions taken in **float64**:

    I_pre = I + α_t;  fires[t] = I_pre;  fire at t  ⇔  I_pre ≥ threshold
    on a fire:  cur = 1 − I,  rem = α_t − cur,  I = I_pre − 1      (FunASR subtracts 1, not threshold)
    otherwise:  I = I_pre

Token k is the weighted sum  rem_{k−1}·h[f_{k−1}] + Σ_{f_{k−1}<t<f_k} α_t·h[t] + cur_k·h[f_k]  over its contiguous
frame range (f_k = its fire frame; token 0 starts at frame 0). Its weights sum to 1. A trailing partial token
(the integrate left after the last fire) is dropped.

Decisions made here (tested in tests/test_cif.py):

* **float64 decisions, not cif_v1's.** FunASR's vectorised `cif_v1` (which CifPredictorV2 uses) takes the
  float64 prefix sum but casts it to float32 before the floor, so near an integer it can fire one frame early
  (golden CIF cases 10 and 11). This op follows the float64 loop everywhere. For float32 alphas (≥ 2^-29 or 0)
  and threshold 1 that loop is *exact* (I stays a multiple of 2^-52 in [0, 2), so no addition rounds), so its
  fires are those of exact arithmetic; the compiled kernels use that to scan in parallel with 64-bit
  fixed-point integers and still give the loop's bits (csrc/cif.h). A model whose transcript hinges on
  cif_v1's float32 rounding (a prefix sum within ~1e-7 relative of an integer) can differ in that token.
  FunASR's loop `cif` keeps its integrate in float32 and also differs there (golden case 10).
* **Alphas ≥ 1** (only after training's rescaling): FunASR's loop semantics, at most one fire per frame; the
  excess stays in the integrate (which may then exceed 1) and fires again on the following frames, with
  cur = 1 − I possibly ≤ 0. Every token's weights still sum to 1. `cif_v1` instead counts a frame where the
  prefix jumps by 2 once and loses a token (golden case 18); we follow the loop. Nothing is ever read or
  written out of bounds: at most one token per frame, so N ≤ T + 1.
* **token_num** is the number of fires. For alphas < 1 and threshold 1 that is floor(Σα) (incl. the tail)
  in exact arithmetic, which is what CifPredictorV2 computes. N (rows of acoustic_embeds) = max token_num
  (inference), or max(target_lengths, token_num) in training; rows past an utterance's token_num are zero.
  (FunASR's raw `cif` pads to round(Σα).max() rows, then V2 truncates to the floor; the padding rows are zero.)
* **Tail** (tail_threshold > 0, inference, §3.3): one extra slot at index lengths[b] (each utterance's own end,
  not the padded T) with weight tail_threshold and a *zero* hidden frame. It can fire (then the last token's
  cur·0 adds nothing) and it changes the last fire decision, never the hidden content. fires then has T+1
  columns: column lengths[b] is the tail slot; later columns are 0. FunASR instead multiplies the tail weight
  by the padded encoder output at index len_b in a padded batch (golden README, "tail slot leak"); here
  every utterance of a padded batch gets exactly its batch-1 result.
* **Padded batches**: frames t ≥ lengths[b] never contribute (their alphas and hidden values, even NaN, are
  ignored). An utterance with no fire gives token_num 0 and zero rows wherever it sits in the batch (FunASR's
  cif_v1 raises IndexError when it is last).
* **Training** (target_lengths given): alphas masked to the valid frames and rescaled per utterance to sum to
  target_lengths (§3.1, in alphas' dtype as FunASR does), then CIF without a tail (tail_threshold is ignored,
  as in FunASR). An utterance whose alphas sum to 0 cannot be rescaled; its alphas stay 0. The rescale is
  ordinary autograd around the op. For float32 alphas the float32 rescale can miss the target by a few ulps;
  a constant correction at the last nonzero alpha lifts the exact sum to the target, so the last token
  (eos with predictor_bias 1) always fires at the last frame (`_target_shortfall`; FunASR's cif_v1 fires
  there whenever its float32-cast prefix reaches the target, i.e. almost always).
* **dtypes**: hidden float32/float16/bfloat16/float64, accumulated in float32 (float64 for float64 hidden),
  embeddings returned in hidden's dtype; alphas float32/float64, fires returned in alphas' dtype.
* **fire_frames** (B, N) int64: the frame at which token k fired (lengths[b] = the tail slot), -1 padded.

Backward (for the fire pattern of the inputs; the decisions are piecewise constant in α): with
P_t = Σ_{u≤t} α_u and c_t the fires before t, I after frame t is P_t − c_{t+1}, so cur_k = 1 − (P_{f_k−1} − k) and
rem_k = P_{f_k} − (k+1). With G_k = ∂L/∂embeds[k]: ∂L/∂h[t] is the frame's weight(s) times G of its token(s),
and ∂L/∂α_u = ⟨G_{k(u)}, h[u]⟩ (u not a fire frame) + Σ_{fires f > u} −⟨G_k, h[f]⟩ + Σ_{fires f ≥ u} ⟨G_{k+1}, h[f]⟩
+ Σ_{t ≥ u} ∂L/∂fires[t] — one suffix sum per utterance (csrc/cif_cpu.cpp, cif_cuda.cu).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .._ext import has_kernels, use_kernels
from ..masks import length_mask


class CifOutput(NamedTuple):
    """What CIF returns; the first three are FunASR predictor's (acoustic_embeds, token_num, ..., fires)."""

    acoustic_embeds: torch.Tensor  # (B, N, D), hidden's dtype; rows past token_num[b] are zero
    token_num: torch.Tensor  # (B,) int64: fires per utterance
    fires: torch.Tensor  # (B, T) or (B, T+1) with a tail, alphas' dtype: the integrate before each reset
    fire_frames: torch.Tensor  # (B, N) int64: frame of each token's fire, -1 padded


def _lengths_arg(lengths, device) -> torch.Tensor | None:
    if lengths is None:
        return None
    if not isinstance(lengths, torch.Tensor):
        lengths = torch.as_tensor(lengths, device=device)
    if not lengths.is_floating_point() and lengths.dtype not in (torch.bool, torch.int64):
        lengths = lengths.to(torch.int64)  # float lengths are rejected later with a clear message
    return lengths


def rescale_alphas(alphas: torch.Tensor, target_lengths, lengths=None) -> tuple[torch.Tensor, int]:
    """Training-time rescaling (spec §3.1): alphas masked to the valid frames, times target / Σα per utterance.

    alphas: (B, T); target_lengths: (B,) (tensor or sequence). Returns (rescaled alphas in alphas' dtype,
    max target length as an int). Differentiable; utterances with Σα = 0 keep zero alphas.
    """
    B, T = alphas.shape
    tl = target_lengths if isinstance(target_lengths, torch.Tensor) else torch.as_tensor(target_lengths)
    tl = tl.to(alphas.device)
    if tl.shape != (B,):
        raise ValueError(f"target_lengths must have shape (B,) = ({B},), got {tuple(tl.shape)}")
    if tl.numel() and bool((tl < 0).any()):
        raise ValueError("target_lengths must be >= 0")
    mask = length_mask(_lengths_arg(lengths, alphas.device), T, alphas.device)
    a = alphas if mask is None else torch.where(mask, alphas, torch.zeros((), dtype=alphas.dtype, device=alphas.device))
    total = a.sum(-1)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    scale = torch.where(total > 0, tl.to(a.dtype) / safe, torch.zeros_like(total))
    max_target = int(torch.ceil(tl.max()).item()) if B > 0 else 0
    scaled = a * scale[:, None]
    if scaled.dtype == torch.float32 and B and T:
        scaled = scaled + _target_shortfall(scaled.detach(), tl, total > 0)
    return scaled, max_target


def _target_shortfall(scaled: torch.Tensor, tl: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """(B, T) float32 correction, zero but at each utterance's last nonzero alpha, that lifts the exact
    (float64) sum of the rescaled float32 alphas from just below the target to at least the target.

    Why: in exact arithmetic Σα = target, so the last token fires at the last frame; the float32 rescale
    misses by a few ulps (Σα = 40.999995 for a target of 41 on the golden `train_long`), and the float64
    decisions would then drop the last token (eos), leaving a zero embedding. FunASR's cif_v1 casts its
    prefix sum to float32 before the floor and so *usually* fires there (whenever it lands within half a
    float32 ulp of the target); this makes it always fire. The correction is a constant (no gradient): the
    shortfall is rounding, not a function of the alphas. Only integer targets are affected in effect."""
    B, T = scaled.shape
    a64 = scaled.double()
    short = tl.to(torch.float64) - a64.sum(-1)  # exact for float32 alphas in the model's range
    pos = torch.arange(T, device=scaled.device)[None, :].expand(B, T)
    last = torch.where(scaled > 0, pos, torch.full_like(pos, -1)).amax(-1)
    need = ok & (short > 0) & (last >= 0)
    idx = last.clamp_min(0)[:, None]
    old = a64.gather(1, idx).squeeze(1)
    want = old + short
    new = want.float()
    new = torch.where(new.double() < want, torch.nextafter(new, torch.full_like(new, float("inf"))), new)
    fix = torch.where(need, (new - old.float()), torch.zeros_like(new))
    return torch.zeros_like(scaled).scatter(1, idx, fix[:, None])


def _prepare(alphas, lengths, tail_threshold, target_lengths):
    """(alphas to integrate, tail, min_tokens) for inference or training."""
    if target_lengths is None:
        return alphas, float(tail_threshold), 0
    if alphas.dim() != 2:
        raise ValueError(f"alphas must be (B, T), got shape {tuple(alphas.shape)}")
    scaled, max_target = rescale_alphas(alphas, target_lengths, lengths)
    return scaled, 0.0, max_target


def _check_ref_args(hidden, alphas, threshold, tail_threshold, lengths):
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be (B, T, D), got shape {tuple(hidden.shape)}")
    if alphas.dim() != 2 or alphas.shape != hidden.shape[:2]:
        raise ValueError(f"alphas must be (B, T) = {tuple(hidden.shape[:2])}, got {tuple(alphas.shape)}")
    if alphas.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"alphas must be float32 or float64, got {alphas.dtype}")
    if not (threshold > 0 and threshold < float("inf")):
        raise ValueError(f"threshold must be a finite number > 0, got {threshold}")
    if not (tail_threshold >= 0 and tail_threshold < float("inf")):
        raise ValueError(f"tail_threshold must be a finite number >= 0, got {tail_threshold}")
    B, T = alphas.shape
    if lengths is None:
        return torch.full((B,), T, dtype=torch.int64, device=hidden.device)
    if lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be an integer tensor, got {lengths.dtype}")
    if lengths.shape != (B,):
        raise ValueError(f"lengths must have shape (B,) = ({B},), got {tuple(lengths.shape)}")
    lengths = lengths.to(device=hidden.device, dtype=torch.int64)
    if B and bool(((lengths < 0) | (lengths > T)).any()):
        raise ValueError(f"lengths must lie in [0, T = {T}], got {lengths.tolist()}")
    return lengths


def cif_ref(
    hidden: torch.Tensor,
    alphas: torch.Tensor,
    threshold: float = 1.0,
    lengths=None,
    tail_threshold: float = 0.0,
    target_lengths=None,
) -> CifOutput:
    """The plain float64 loop of spec §3.4 over frames, vectorised over the batch: the oracle of the tests.

    hidden: (B, T, D); alphas: (B, T) float32/float64; lengths: (B,) ints or None (all T frames valid);
    tail_threshold > 0 adds the inference tail slot; target_lengths: (B,) switches to training (rescaled
    alphas, no tail). Everything is computed in float64 (autograd flows through it); embeddings are returned in
    hidden's dtype, fires in alphas' dtype. Slow (a Python step per frame): tests and fallback only.
    """
    lengths = _lengths_arg(lengths, hidden.device)
    lens = _check_ref_args(hidden, alphas, threshold, tail_threshold, lengths)
    alphas, tail, min_tokens = _prepare(alphas, lengths, tail_threshold, target_lengths)
    B, T, D = hidden.shape
    dev = hidden.device
    f64 = torch.float64
    has_tail = tail > 0
    Tf = T + int(has_tail)
    t_idx = torch.arange(Tf, device=dev)
    valid = t_idx[None, :] < lens[:, None]  # frames with hidden content
    active = t_idx[None, :] < (lens + int(has_tail))[:, None]  # frames the loop visits
    a = alphas.to(f64)
    if B and T and bool((~torch.isfinite(a) | (a < 0))[valid[:, :T]].any()):
        raise ValueError("alphas must be finite and >= 0 at every valid frame")
    zero = torch.zeros((), dtype=f64, device=dev)
    a_ext = torch.where(valid[:, :T], a, zero)
    h_ext = torch.where(valid[:, :T, None], hidden.to(f64), zero)
    if has_tail:
        a_ext = torch.cat([a_ext, a_ext.new_zeros(B, 1)], 1)
        a_ext = torch.where(t_idx[None, :] == lens[:, None], torch.full((), tail, dtype=f64, device=dev), a_ext)
        h_ext = torch.cat([h_ext, h_ext.new_zeros(B, 1, D)], 1)

    I = torch.zeros(B, dtype=f64, device=dev)
    Facc = torch.zeros(B, D, dtype=f64, device=dev)
    fires_cols, fire_cols, frames = [], [], []
    for t in range(Tf):
        at, ht, act = a_ext[:, t], h_ext[:, t], active[:, t]
        pre = I + at
        fire = (pre >= threshold) & act
        cur = torch.where(fire, 1.0 - I, at)
        emb = Facc + cur[:, None] * ht
        frames.append(emb)
        Facc = torch.where(fire[:, None], (at - cur)[:, None] * ht, emb)
        I = torch.where(fire, pre - 1.0, pre)
        fires_cols.append(torch.where(act, pre, zero))
        fire_cols.append(fire)

    if Tf:
        fire_m = torch.stack(fire_cols, 1)
        fires = torch.stack(fires_cols, 1)
        frames_st = torch.stack(frames, 1)
    else:
        fire_m = torch.zeros(B, 0, dtype=torch.bool, device=dev)
        fires = torch.zeros(B, 0, dtype=f64, device=dev)
        frames_st = torch.zeros(B, 0, D, dtype=f64, device=dev)
    token_num = fire_m.sum(1).to(torch.int64)
    N = max(int(token_num.max()) if B else 0, min_tokens)
    rows, ffs = [], []
    for b in range(B):
        idx = fire_m[b].nonzero().flatten()
        r = frames_st[b, idx]
        rows.append(F.pad(r, (0, 0, 0, N - r.shape[0])))
        ffs.append(F.pad(idx, (0, N - idx.shape[0]), value=-1))
    embeds = torch.stack(rows) if B else torch.zeros(0, N, D, dtype=f64, device=dev)
    fire_frames = torch.stack(ffs) if B else torch.zeros(0, N, dtype=torch.int64, device=dev)
    return CifOutput(embeds.to(hidden.dtype), token_num, fires.to(alphas.dtype), fire_frames.to(torch.int64))


def cif_cumsum(
    hidden: torch.Tensor,
    alphas: torch.Tensor,
    threshold: float = 1.0,
    lengths=None,
    tail_threshold: float = 0.0,
    target_lengths=None,
) -> CifOutput:
    """Vectorised CIF in the spirit of FunASR's cif_v1 (our own code): the benchmarks' fast PyTorch baseline, not
    a reference (`cif_ref` is the oracle and what kernels=False runs).

    Fires where floor(float64 prefix sum) increases (threshold 1 assumed, like cif_v1, but without its float32
    cast and without its crash on a zero-fire last item); embeddings are differences of a cumulative sum of
    α·h in float32 (float64 for float64 hidden), corrected by the remainders. Equals cif_ref for alphas < 1
    up to the cumulative sum's rounding (it drifts on long inputs) and float64 ties; alphas ≥ 1 differ (a
    jump of 2 fires once). Same arguments and outputs as cif_ref.
    """
    lengths = _lengths_arg(lengths, hidden.device)
    lens = _check_ref_args(hidden, alphas, threshold, tail_threshold, lengths)
    alphas, tail, min_tokens = _prepare(alphas, lengths, tail_threshold, target_lengths)
    B, T, D = hidden.shape
    dev = hidden.device
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    has_tail = tail > 0
    Tf = T + int(has_tail)
    t_idx = torch.arange(Tf, device=dev)
    valid = t_idx[None, :T] < lens[:, None]
    a = torch.where(valid, alphas.to(torch.float64), 0.0)
    h = torch.where(valid[..., None], hidden.to(acc), 0.0)
    if has_tail:
        a = torch.cat([a, a.new_zeros(B, 1)], 1)
        a = torch.where(t_idx[None, :] == lens[:, None], tail, a)
        h = torch.cat([h, h.new_zeros(B, 1, D)], 1)
    active = t_idx[None, :] < (lens + int(has_tail))[:, None]
    prefix = a.cumsum(1)
    fl = prefix.floor()
    prev = F.pad(fl, (1, 0))[:, :Tf]
    fire = (fl > prev) & active
    fires = torch.where(active, prefix - prev, 0.0).to(alphas.dtype)
    S = torch.cumsum(a.to(acc)[..., None] * h, dim=1)
    b_idx, f_idx = fire.nonzero(as_tuple=True)  # row-major: by utterance, then frame
    token_num = fire.sum(1)
    starts = token_num.cumsum(0) - token_num
    k_idx = torch.arange(b_idx.numel(), device=dev) - starts[b_idx]
    rem = (prefix - fl)[b_idx, f_idx].to(acc)
    upto = S[b_idx, f_idx] - rem[:, None] * h[b_idx, f_idx]  # Σ weights up to token k's end
    before = torch.roll(upto, 1, 0)
    before = torch.where((k_idx == 0)[:, None], 0.0, before)
    N = max(int(token_num.max()) if B else 0, min_tokens)
    embeds = torch.zeros(B, N, D, dtype=acc, device=dev)
    embeds[b_idx, k_idx] = upto - before
    fire_frames = torch.full((B, N), -1, dtype=torch.int64, device=dev)
    fire_frames[b_idx, k_idx] = f_idx
    return CifOutput(embeds.to(hidden.dtype), token_num.to(torch.int64), fires, fire_frames)


# --- the compiled op: fake impl and autograd -----------------------------------------------------------------

if has_kernels():

    @torch.library.register_fake("paraformer_ext::cif")
    def _cif_fake(hidden, alphas, lengths, threshold, tail_threshold, min_tokens):
        torch._check(hidden.dim() == 3, lambda: "hidden must be (B, T, D)")
        torch._check(alphas.dim() == 2, lambda: "alphas must be (B, T)")
        B, T, D = hidden.shape
        Tf = T + 1 if tail_threshold > 0 else T
        N = torch.library.get_ctx().new_dynamic_size(min=min_tokens)
        return (
            hidden.new_empty((B, N, D)),
            hidden.new_empty((B,), dtype=torch.int64),
            alphas.new_empty((B, Tf)),
            hidden.new_empty((B, N), dtype=torch.int64),
        )

    @torch.library.register_fake("paraformer_ext::cif_backward")
    def _cif_backward_fake(grad_embeds, grad_fires, hidden, alphas, lengths, threshold, tail_threshold):
        return torch.empty_like(hidden, memory_format=torch.contiguous_format), torch.empty_like(
            alphas, memory_format=torch.contiguous_format
        )

    def _cif_setup_context(ctx, inputs, output):
        hidden, alphas, lengths, threshold, tail_threshold, _min_tokens = inputs
        ctx.save_for_backward(hidden, alphas, lengths)
        ctx.threshold = threshold
        ctx.tail_threshold = tail_threshold

    def _cif_backward(ctx, grad_embeds, _grad_token_num, grad_fires, _grad_fire_frames):
        hidden, alphas, lengths = ctx.saved_tensors
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return None, None, None, None, None, None
        grad_h, grad_a = torch.ops.paraformer_ext.cif_backward(
            grad_embeds.contiguous(), grad_fires, hidden, alphas, lengths, ctx.threshold, ctx.tail_threshold
        )
        return (
            grad_h if ctx.needs_input_grad[0] else None,
            grad_a if ctx.needs_input_grad[1] else None,
            None,
            None,
            None,
            None,
        )

    torch.library.register_autograd("paraformer_ext::cif", _cif_backward, setup_context=_cif_setup_context)


def cif_fn(
    hidden: torch.Tensor,
    alphas: torch.Tensor,
    threshold: float = 1.0,
    lengths=None,
    tail_threshold: float = 0.0,
    target_lengths=None,
) -> CifOutput:
    """The compiled CIF op (CPU or CUDA); same signature and results as `cif_ref` (float64 decisions, embeddings
    accumulated in float32, or float64 for float64 hidden). Differentiable w.r.t. hidden and alphas."""
    lengths = _lengths_arg(lengths, hidden.device)
    alphas, tail, min_tokens = _prepare(alphas, lengths, tail_threshold, target_lengths)
    out = torch.ops.paraformer_ext.cif(hidden, alphas, lengths, float(threshold), float(tail), int(min_tokens))
    return CifOutput(*out)


def cif(
    hidden: torch.Tensor,
    alphas: torch.Tensor,
    threshold: float = 1.0,
    lengths=None,
    tail_threshold: float = 0.0,
    target_lengths=None,
    *,
    kernels: bool | None = None,
) -> CifOutput:
    """CIF integrate-and-fire (semantics in this module's docstring): `cif_fn` or `cif_ref`, chosen by
    `kernels` for hidden's device (_ext.use_kernels).

    hidden: (B, T, D) encoder output; alphas: (B, T) predictor weights (float32/float64); lengths: (B,) valid
    frames per utterance or None; tail_threshold: inference tail weight (CifPredictorV2 config: 0.45);
    target_lengths: (B,) training targets (rescales alphas, disables the tail).
    Returns CifOutput(acoustic_embeds (B, N, D), token_num (B,) int64, fires (B, T or T+1),
    fire_frames (B, N) int64).
    """
    if use_kernels(kernels, hidden.device):
        return cif_fn(hidden, alphas, threshold, lengths, tail_threshold, target_lengths)
    return cif_ref(hidden, alphas, threshold, lengths, tail_threshold, target_lengths)
