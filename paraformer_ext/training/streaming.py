"""The chunk-masked training forward of the streaming Paraformer (FunASR's `ParaformerStreaming.forward` with
`SANMEncoderChunkOpt` and its `overlap_chunk`, funasr/models/scama/chunk_utilis.py; spec paraformer.md §6.2).

A chunk configuration (C frames per chunk, stride S, pad_left P, encoder / decoder look-back E / D, in chunks)
is drawn per batch from encoder_conf's lists. FunASR copies the frames into a chunk layout: chunk j holds the
frames jS − P … jS − P + C − 1 (zero outside the utterance), each chunk preceded by F = (kernel_size − 1) // 2
zero "shift" rows, and masks:

* encoder self-attention: a frame sees every frame of its own chunk; the chunk's first S rows also see the
  first S rows of the E previous chunks;
* encoder FSMN: the zeroed shift rows make it chunk-local (its reach is F on either side);
* predictor: only rows P … P + S − 1 of a chunk (the stride, each frame of the utterance exactly once) get an
  alpha; its convolution (reach ≤ F) sees zero shift rows at chunk edges, so it is chunk-local too;
* decoder cross-attention (decoder_attention_chunk_type "chunk"): token k, fired in chunk c, sees every frame of
  chunk c and the stride rows of the D previous chunks.

We keep the layout without the shift rows, (B, n·C, d) with n = ⌈T / S⌉ chunks: the shift rows only ever hold
zeros that nothing valid reads, so the FSMN and the predictor convolution run per chunk (C-frame sequences with
zero padding) and the attention masks skip them. The arithmetic of every valid row is FunASR's.

Where we differ from FunASR 1.4.16, on purpose:
* FunASR draws the configuration index (`random_choice`) but its `encode` drops the `ind` keyword, so its encoder,
  predictor and decoder masks always use configuration 0. We use the drawn one (what the config's lists are for);
  with one configuration, or `chunk_config=0`, the two agree.
* a padded batch changes no utterance's result (as the offline loss): padded rows are zeroed before the predictor
  (FunASR's convolution reads a padded row's output), and a token whose Σα falls an ulp short of its index
  (FunASR: no alignment, so its chunk is the batch's last one) sees its own utterance's last chunk, which is what
  FunASR gives the same utterance in a batch of one.
* eval mode keeps the training rule for the decoder mask (alignments rounded from the target lengths); FunASR's
  eval-mode forward floors them and can then build a mask of the wrong shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..model.predictor import PredictorOutput


@dataclass(frozen=True)
class ChunkGeometry:
    """One training chunk configuration (FunASR's overlap_chunk.get_chunk_size(ind))."""

    chunk: int  # C: frames per chunk
    stride: int  # S: new frames per chunk
    pad_left: int  # P: frames of the previous chunk repeated at the start
    encoder_look_back: int  # E: chunks the encoder attention looks back
    decoder_look_back: int  # D: chunks the decoder cross-attention looks back


# SANMEncoderChunkOpt's defaults when encoder_conf leaves a list out
_DEFAULTS = {"chunk_size": (16,), "stride": (10,), "pad_left": (0,), "encoder_att_look_back_factor": (1,),
             "decoder_att_look_back_factor": (1,)}


def chunk_configs(enc) -> list[ChunkGeometry]:
    """encoder_conf's lists (model.cfg.encoder) → one ChunkGeometry per entry of chunk_size. pad_left and the
    look-backs shorter than chunk_size repeat their first value (FunASR's check_chunk_size_args); stride must be
    as long as chunk_size."""
    lists = {}
    for key, default in _DEFAULTS.items():
        v = getattr(enc, key)
        v = default if v is None else v
        lists[key] = [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
    n = len(lists["chunk_size"])
    for key in ("pad_left", "encoder_att_look_back_factor", "decoder_att_look_back_factor"):
        if len(lists[key]) < n:
            lists[key] = [lists[key][0]] * n
    if len(lists["stride"]) < n:
        raise ValueError(f"config.yaml: encoder_conf.stride {lists['stride']} needs one entry per chunk_size "
                         f"{lists['chunk_size']}")
    out = []
    for i in range(n):
        g = ChunkGeometry(*(lists[k][i] for k in _DEFAULTS))
        if not (g.chunk >= 1 and g.stride >= 1 and g.pad_left >= 0 and g.stride + g.pad_left <= g.chunk
                and g.encoder_look_back >= 0 and g.decoder_look_back >= 0):
            raise ValueError(f"config.yaml: encoder_conf chunk configuration {i} = {g} is not a valid one: need "
                             "chunk_size ≥ stride + pad_left, stride ≥ 1, pad_left ≥ 0 and look-backs ≥ 0")
        out.append(g)
    return out


def choose_chunk_config(n: int, training: bool, generator: torch.Generator | None, forced: int | None) -> int:
    """FunASR's random_choice: in train mode with several configurations one index from torch.randint(0, n)
    (`generator`; None: the global RNG, as FunASR), otherwise 0; `forced` wins (tests, evaluation)."""
    if forced is not None:
        if not 0 <= int(forced) < n:
            raise ValueError(f"chunk_config must index one of the {n} chunk configurations of encoder_conf, got {forced}")
        return int(forced)
    if training and n > 1:
        dev = generator.device if generator is not None else "cpu"
        return int(torch.randint(0, n, (), generator=generator, device=dev))
    return 0


def check_streaming_geometry(model) -> None:
    """The conditions under which dropping the shift rows is exact (every released streaming config meets them)."""
    enc, pred = model.cfg.encoder, model.cfg.predictor
    shift = (enc.kernel_size - 1) // 2
    if enc.kernel_size % 2 == 0 or enc.sanm_shfit != 0 or max(pred.l_order, pred.r_order) > shift:
        raise NotImplementedError(
            f"streaming training needs an odd encoder kernel_size, encoder sanm_shfit 0 and predictor l_order, r_order "
            f"≤ (kernel_size − 1) // 2 (got {enc.kernel_size}, {enc.sanm_shfit}, {pred.l_order}, {pred.r_order}): "
            "otherwise FunASR's FSMN or predictor convolution reads across chunks")


class ChunkLayout(NamedTuple):
    """A padded batch in chunks (FunASR's split_chunk without the shift rows)."""

    geometry: ChunkGeometry
    frames: torch.Tensor  # (n, C) int64: the utterance frame each row copies (jS + i − P; may be outside it)
    lengths: torch.Tensor  # (B, n) int64: valid rows of each chunk, a prefix (FunASR's x_len_chunk, chunk by chunk)
    last: torch.Tensor  # (B,) int64: each utterance's last chunk, ⌈len / S⌉ − 1

    @property
    def n(self) -> int:
        return self.frames.size(0)

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(chunk index, row within the chunk) of each of the n·C rows."""
        g, dev = self.geometry, self.lengths.device
        return (torch.arange(self.n, device=dev).repeat_interleave(g.chunk),
                torch.arange(g.chunk, device=dev).repeat(self.n))

    def valid(self) -> torch.Tensor:
        """(B, n·C) bool: rows FunASR counts as the utterance's (keys it may attend to)."""
        C = self.geometry.chunk
        return (torch.arange(C, device=self.lengths.device) < self.lengths[..., None]).flatten(1)

    def gather(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x (B, T, d) → (B, n·C, d): each row its frame, zero where the frame is outside [0, len)."""
        f = self.frames.flatten()
        inside = (f[None, :] >= 0) & (f[None, :] < lengths[:, None])
        rows = x[:, f.clamp(0, x.size(1) - 1)]
        return rows * inside[..., None].to(rows.dtype)

    def stride_rows(self, x: torch.Tensor, T: int) -> torch.Tensor:
        """(B, n·C, ...) → (B, T, ...): the stride rows in time order (FunASR's remove_chunk); frame f is row
        P + f mod S of chunk f // S."""
        g = self.geometry
        B = x.size(0)
        x = x.reshape(B, self.n, g.chunk, *x.shape[2:])[:, :, g.pad_left : g.pad_left + g.stride]
        return x.reshape(B, self.n * g.stride, *x.shape[3:])[:, :T]


def chunk_layout(lengths: torch.Tensor, g: ChunkGeometry, T: int | None = None) -> ChunkLayout:
    """lengths (B,) frames per utterance → the chunk layout of FunASR's gen_chunk_mask for configuration g.
    Valid rows: every row of the chunks before an utterance's last (look-ahead rows past its end included, with
    zero input), the last chunk up to P + len − (n_b − 1)·S rows (its own last frame), nothing after."""
    T = int(lengths.max()) if T is None else T
    n = max(1, math.ceil(T / g.stride))
    dev = lengths.device
    j = torch.arange(n, device=dev)
    frames = j[:, None] * g.stride + torch.arange(g.chunk, device=dev)[None, :] - g.pad_left
    last = (lengths + g.stride - 1) // g.stride - 1
    tail = g.pad_left + lengths - last * g.stride
    full = torch.full_like(tail, g.chunk)
    rows = torch.where(j[None, :] < last[:, None], full[:, None], torch.where(j[None, :] == last[:, None], tail[:, None], 0))
    return ChunkLayout(g, frames, rows.long(), last)


def encoder_attention_mask(layout: ChunkLayout) -> torch.Tensor:
    """(B, n·C, n·C) bool, FunASR's mask_att_chunk_encoder × key padding: a row sees its own chunk; rows i < S also
    see rows i' < S of the E previous chunks. Padded query rows see their own chunk, padded or not, so that no
    row is empty (their output is never read)."""
    g = layout.geometry
    j, i = layout.rows()
    back = j[:, None] - j[None, :]
    first = (i < g.stride)
    pattern = (back == 0) | ((back > 0) & (back <= g.encoder_look_back) & first[:, None] & first[None, :])
    valid = layout.valid()
    return pattern[None] & (valid[:, None, :] | ~valid[:, :, None])


def token_chunks(alphas: torch.Tensor, lengths: torch.Tensor, target_lengths: torch.Tensor, L: int,
                 layout: ChunkLayout) -> torch.Tensor:
    """(B, L) int64: the chunk each target position fires in, by FunASR's gen_frame_alignments on the alphas
    rescaled to the target length in float32 (its arithmetic): token k (1-based) fires at the first frame where
    ⌊cumsum⌋ ≥ k. A position that does not fire within the utterance (past its target, or an ulp short of it)
    gets the utterance's last chunk. alphas: (B, T) float32 unscaled, zero past lengths."""
    scaled = alphas * (target_lengths.to(alphas.dtype) / alphas.sum(-1))[:, None]
    floor = torch.floor(torch.cumsum(scaled, dim=1)).contiguous()
    k = torch.arange(1, L + 1, device=alphas.device, dtype=floor.dtype).expand(alphas.size(0), L).contiguous()
    frame = torch.searchsorted(floor, k)  # first index with ⌊cumsum⌋ ≥ k
    fired = frame < lengths[:, None]
    return torch.where(fired, frame // layout.geometry.stride, layout.last[:, None])


def decoder_memory_mask(layout: ChunkLayout, chunks: torch.Tensor) -> torch.Tensor:
    """(B, L, n·C) bool, FunASR's build_scama_mask_for_cross_attention_decoder (attention_chunk_type "chunk") ×
    the encoder padding: position k sees the valid rows of its chunk c and the stride rows of chunks c − D … c − 1."""
    g = layout.geometry
    j, i = layout.rows()
    stride_row = (i >= g.pad_left) & (i < g.pad_left + g.stride)
    back = chunks[:, :, None] - j[None, None, :]
    see = (back == 0) | ((back > 0) & (back <= g.decoder_look_back) & stride_row[None, None, :])
    return see & layout.valid()[:, None, :]


class StreamingForward(NamedTuple):
    memory: torch.Tensor  # (B, Tm, d) what the decoder attends to
    memory_lengths: torch.Tensor | None  # (B,) when memory_mask is None
    memory_mask: torch.Tensor | None  # (B, L, Tm) bool
    predictor: PredictorOutput  # CIF rescaled to the targets
    token_length: torch.Tensor  # (B,) unscaled Σα, the MAE's prediction


def chunked_forward(model, speech: torch.Tensor, speech_lengths: torch.Tensor, target_lengths: torch.Tensor,
                    L: int, g: ChunkGeometry) -> StreamingForward:
    """Encoder (chunk-masked), predictor (stride rows, CIF rescaled to target_lengths) and the decoder's memory and
    mask for configuration g. speech (B, T, F) features, speech_lengths (B,), target_lengths (B,) incl. eos, L =
    max target length."""
    check_streaming_geometry(model)
    B, T, _ = speech.shape
    layout = chunk_layout(speech_lengths, g, T)
    C = g.chunk
    x = layout.gather(model.encoder.embed(speech), speech_lengths)  # PE at the utterance's own positions
    enc = model.encoder.layers(x, layout.lengths, encoder_attention_mask(layout))
    # padded rows zeroed (FunASR's hold garbage its predictor convolution reads): any batch gives batch-1 results
    enc = enc * layout.valid()[..., None].to(enc.dtype)
    d = enc.size(-1)
    alphas = model.predictor.alphas(enc.reshape(B * layout.n, C, d), layout.lengths.reshape(-1))
    alphas = layout.stride_rows(alphas.reshape(B, layout.n * C), T)
    hidden = layout.stride_rows(enc, T)
    pred = model.predictor.integrate(hidden, alphas, speech_lengths, target_lengths)
    token_length = alphas.sum(-1)
    if model.cfg.model.decoder_attention_chunk_type != "chunk":  # FunASR: remove_chunk, the whole utterance
        return StreamingForward(hidden, speech_lengths, None, pred, token_length)
    chunks = token_chunks(alphas, speech_lengths, target_lengths, L, layout)
    return StreamingForward(enc, None, decoder_memory_mask(layout, chunks), pred, token_length)


__all__ = ["ChunkGeometry", "ChunkLayout", "StreamingForward", "check_streaming_geometry", "choose_chunk_config",
           "chunk_configs", "chunk_layout", "chunked_forward", "decoder_memory_mask", "encoder_attention_mask",
           "token_chunks"]
