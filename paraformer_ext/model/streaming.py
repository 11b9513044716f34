"""FunASR's streaming Paraformer (`ParaformerStreaming`, paraformer-zh-streaming) for a batch of streams: one
model chunk per stream per call, each stream with its own carried state (spec paraformer.md §6; FunASR:
paraformer_streaming/model.py generate_chunk, scama/encoder.py SANMEncoderChunkOpt.forward_chunk,
cif_predictor.py CifPredictorV2.forward_chunk, paraformer/decoder.py ParaformerSANMDecoder.forward_chunk).

The weights are the offline modules' (same state_dict); this file only runs them the way forward_chunk does.
With chunk_size = (c0, c1, c2) (FunASR's cache["chunk_size"], e.g. (0, 10, 5) for 600 ms):

* Encoder input: the chunk's n feature frames · sqrt(d) + the sinusoidal PE at the stream's positions
  (pos+1 .. pos+n; pos += n), prepended with the last c0 + c2 *embedded* frames of the previous chunk's input
  (zeros before the first chunk): T = c0 + c2 + n frames. Every layer's self-attention reads the stream's
  look-back cache of keys/values (the previous chunks' frames except their last c2, at most
  encoder_look_back · c1 of them; none before the first chunk) plus the chunk's own; no mask. The FSMN memory
  sees only the chunk's T frames (zero padded).
* Tail chunk (FunASR: the final call has < 960 samples): no features are computed; the input is the carried
  c0 + c2 embedded frames multiplied by sqrt(d) *again* (FunASR scales its cached tensor in place) and the PE
  position still advances by c0 + c2 (the PE'd tensor is discarded).
* Predictor: alphas of the T frames (conv with zero padding), then zero at t < c0 and, unless final, at
  t ≥ c0 + c1 (those frames come back as the next chunk's overlap); streaming CIF (ops/cif_stream.py) with the
  carried integrate and frame, plus the tail slot on the final chunk.
* Decoder, only when the chunk fired at least one token: FSMN layers carry the last K−1 inputs of the
  stream's earlier tokens; cross-attention reads [the previous decoded chunk's last decoder_look_back · c1
  memory keys/values, this chunk's T frames]. `decoders2` runs only when it has more than one layer (FunASR's
  `num_blocks − att_layer_num > 1` test), its FSMN keeping FunASR's cache with the right padding inside.
  Greedy argmax; ids 0/1/2 are removed.

Batching: streams of a batch may sit at different chunks (different cache lengths), have different frame
counts (a final chunk is shorter) and fire different token counts; everything padded is masked, so each
stream gets its own result (tests/test_streaming.py compares with the stream run alone).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.nn.utils.rnn import pad_sequence

from .._ext import use_kernels
from ..masks import length_mask
from ..ops.cif_stream import cif_stream
from ..ops.fsmn import fsmn_memory
from ..ops.out_proj import out_proj_argmax
from ..ops.sanm import cross_attention_chunk, sanm_chunk_attention
from .layers import sinusoidal_position_encoding
from .paraformer import Paraformer


@dataclass(frozen=True)
class ChunkConfig:
    """FunASR's streaming arguments: chunk_size [c0, c1, c2] (look-ahead frames c2 = c1 // 2 in every FunASR
    example), encoder_chunk_look_back, decoder_chunk_look_back (−1 for the encoder: unlimited)."""

    chunk_size: tuple[int, int, int] = (0, 10, 5)
    encoder_look_back: int = 4
    decoder_look_back: int = 1

    def __post_init__(self):
        cs = tuple(int(c) for c in self.chunk_size)
        if len(cs) != 3 or cs[1] < 1 or cs[0] < 0 or cs[2] < 0:
            raise ValueError(f"chunk_size must be [c0 >= 0, c1 >= 1, c2 >= 0] (FunASR's [0, 10, 5] = 600 ms), got {self.chunk_size!r}")
        object.__setattr__(self, "chunk_size", cs)
        if self.encoder_look_back < -1:
            raise ValueError(f"encoder_look_back must be >= -1 (-1: unlimited), got {self.encoder_look_back}")
        if self.decoder_look_back < 0:
            raise ValueError(f"decoder_look_back must be >= 0, got {self.decoder_look_back}")

    @property
    def overlap(self) -> int:
        return self.chunk_size[0] + self.chunk_size[2]


@dataclass
class StreamState:
    """One stream's carried model state (batch-1 tensors on the model's device)."""

    pos: int = 0  # PE positions used so far
    overlap: torch.Tensor | None = None  # (c0 + c2, F) embedded input frames of the previous chunk
    enc_kv: list | None = None  # per encoder layer: (k (L, D), v (L, D)); None before the first chunk
    cif_alpha: torch.Tensor | None = None  # () float32
    cif_hidden: torch.Tensor | None = None  # (D,) float32
    dec_fsmn: list | None = None  # per FSMN decoder layer: (K-1, D) input history, or None before its first call
    dec_kv: list | None = None  # per cross-attention layer: (k (L, D), v (L, D)); None before the first call
    frames_in: int = 0  # feature (LFR) frames fed so far: the time line of the fires


@dataclass
class ChunkResult:
    """What one chunk of one stream gave."""

    token_ids: list[int]  # after removing 0/1/2, in order
    fire_frames: list[int]  # per token (before filtering: one per decoder position), the LFR frame it fired at
    raw_ids: list[int] = field(default_factory=list)  # the decoder's argmax per position (specials included)
    encoder_out: torch.Tensor | None = None  # (T, d), only when asked
    text: str = ""  # FunASR's text of this chunk alone (set by stream.Stream)


def _pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([r.size(0) for r in rows], dtype=torch.int64, device=rows[0].device)
    return pad_sequence(rows, batch_first=True), lens


def _past(kvs: list, i: int, device) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Layer i's cached (k, v) of every stream, padded: (B, L, D) ×2 and lengths; None when no stream has any."""
    rows = [None if kv is None else kv[i] for kv in kvs]
    if all(r is None or r[0].size(0) == 0 for r in rows):
        return None, None, None
    D = next(r[0].size(1) for r in rows if r is not None)
    ref = next(r[0] for r in rows if r is not None)
    empty = ref.new_zeros(0, D)
    k, lens = _pad([empty if r is None else r[0] for r in rows])
    v, _ = _pad([empty if r is None else r[1] for r in rows])
    return k, v, lens


def _keep_last(t: torch.Tensor, n: int | None) -> torch.Tensor:
    """Python's t[-n:] for n > 0, all of t for n None (FunASR's unlimited look-back)."""
    return t if n is None else t[max(t.size(0) - n, 0):]


class StreamingParaformer:
    """Runs a loaded `Paraformer` (cfg.streaming) chunk by chunk. Stateless itself: the state of each stream
    is a `StreamState` the caller keeps."""

    def __init__(self, model: Paraformer):
        if not model.cfg.streaming:
            raise ValueError("StreamingParaformer needs a ParaformerStreaming model (config.yaml model: ParaformerStreaming)")
        self.model = model
        self.d = model.cfg.encoder.output_size

    @property
    def kernels(self) -> bool:
        return self.model.kernels

    def new_state(self, chunk: ChunkConfig, device) -> StreamState:
        F = self.model.cfg.encoder.input_size
        return StreamState(overlap=torch.zeros(chunk.overlap, F, device=device),
                           cif_alpha=torch.zeros((), device=device), cif_hidden=torch.zeros(self.d, device=device))

    # --- encoder ---------------------------------------------------------------------------------------------

    def _embed(self, feats: torch.Tensor, st: StreamState, chunk: ChunkConfig, tail: bool) -> torch.Tensor:
        """The chunk's encoder input (c0 + c2 + n, F) float32; updates st.pos and st.overlap."""
        scale = math.sqrt(self.d)
        if tail:  # FunASR: the cached embedded frames, scaled a second time; the PE position still advances
            st.pos += st.overlap.size(0)
            return st.overlap * scale
        n = feats.size(0)
        x = feats.float() * scale
        pe = sinusoidal_position_encoding(n, feats.size(1), device=feats.device, start=st.pos)
        st.pos += n
        x = torch.cat([st.overlap, x + pe], dim=0)
        st.overlap = x[max(x.size(0) - chunk.overlap, 0):] if chunk.overlap else x[:0]
        return x

    def encode_chunk(self, inputs: list[torch.Tensor], states: list[StreamState], chunk: ChunkConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs: per stream its (T_b, F) encoder input (from _embed) → (encoder_out (B, T, d), lengths (B,)).
        Updates every stream's look-back cache."""
        enc = self.model.encoder
        kernels = use_kernels(self.kernels, inputs[0].device)
        dtype = enc.after_norm.weight.dtype
        x, lens = _pad([i.to(dtype) for i in inputs])
        lengths = None if bool((lens == x.size(1)).all()) else lens
        layers = list(enc.encoders0) + list(enc.encoders)
        kvs = [s.enc_kv for s in states]
        lb, c1, c2 = chunk.encoder_look_back, chunk.chunk_size[1], chunk.chunk_size[2]
        caching = lb > 0 or lb == -1
        new = [[None] * len(layers) for _ in states]
        for i, layer in enumerate(layers):
            pk, pv, pl = _past(kvs, i, x.device) if caching else (None, None, None)
            same = layer.in_size == layer.size
            x_out, k, v = sanm_chunk_attention(layer.self_attn, layer.norm1(x), lengths, pk, pv, pl,
                                               x if same else None, kernels)
            x = layer.feed_forward(x_out, x_out, norm=layer.norm2)
            if caching:
                for b, st in enumerate(states):
                    T_b = int(lens[b])
                    keep = T_b - c2 if c2 > 0 else 0  # FunASR's k[:, :, :-c2] (empty for c2 = 0)
                    kb, vb = k[b, : max(keep, 0)], v[b, : max(keep, 0)]
                    if st.enc_kv is not None:
                        limit = None if lb == -1 else lb * c1
                        kb = _keep_last(torch.cat([st.enc_kv[i][0], kb]), limit)
                        vb = _keep_last(torch.cat([st.enc_kv[i][1], vb]), limit)
                    new[b][i] = (kb.clone(), vb.clone())
        if caching:
            for b, st in enumerate(states):
                st.enc_kv = new[b]
        return enc.after_norm(x), lens

    # --- predictor -------------------------------------------------------------------------------------------

    def predict_chunk(self, enc: torch.Tensor, lens: torch.Tensor, states: list[StreamState], final: list[bool],
                      chunk: ChunkConfig):
        pred = self.model.predictor
        alphas = pred.alphas(enc, lens)
        c0, c1, _ = chunk.chunk_size
        T = alphas.size(1)
        keep = torch.ones(len(states), T, dtype=torch.bool, device=alphas.device)
        keep[:, :c0] = False
        not_final = torch.tensor([not f for f in final], device=alphas.device)
        keep[not_final, c0 + c1:] = False
        alphas = alphas * keep
        carry_a = torch.stack([s.cif_alpha for s in states]).to(alphas.dtype)
        carry_h = torch.stack([s.cif_hidden for s in states]).to(alphas.dtype)
        out = cif_stream(enc.to(alphas.dtype), alphas, lens, carry_a, carry_h,
                         torch.tensor(final, dtype=torch.bool, device=alphas.device), pred.cfg.threshold,
                         pred.cfg.tail_threshold, kernels=self.kernels)
        for b, st in enumerate(states):
            st.cif_alpha, st.cif_hidden = out.carry_alpha[b], out.carry_hidden[b]
        return out

    # --- decoder ---------------------------------------------------------------------------------------------

    def _fsmn(self, attn, u: torch.Tensor, n: torch.Tensor, hist: list, residual: torch.Tensor, kernels: bool):
        """FSMN memory with FunASR's decoder cache. u (B, N, D) valid to n; hist: per stream (K-1, D) inputs
        carried from its earlier tokens, or None (first call: zero padding both sides). Returns (residual +
        memory (B, N, D), new hist list)."""
        w = attn.fsmn_block.weight
        K = w.size(-1)
        left, right = attn.left, K - 1 - attn.left
        B, N, D = u.shape
        out = torch.empty_like(u)
        new_hist = [None] * B
        first = [b for b in range(B) if hist[b] is None]
        later = [b for b in range(B) if hist[b] is not None]
        if right == 0:  # causal: a first call is a later call with a zero history
            first, later = [], list(range(B))
            hist = [h if h is not None else u.new_zeros(K - 1, D) for h in hist]
        for group, is_first in ((first, True), (later, False)):
            if not group:
                continue
            idx = torch.tensor(group, device=u.device)
            ug, ng = u.index_select(0, idx), n.index_select(0, idx.to(n.device))
            if is_first:  # FunASR pads [left zeros, x, right zeros] and keeps that padded tensor as the cache
                y = fsmn_memory(ug, w, ng, left, kernels=kernels)
                for j, b in enumerate(group):
                    full = torch.cat([u.new_zeros(left, D), ug[j, : int(ng[j])], u.new_zeros(right, D)])
                    new_hist[b] = full[full.size(0) - (K - 1):].clone()
            else:  # [last K-1 inputs, x]: every tap looks back
                hg = torch.stack([hist[b] for b in group])
                seq = torch.cat([hg, ug], dim=1)
                y = fsmn_memory(seq, w, ng + (K - 1), K - 1, kernels=kernels)[:, K - 1:]
                for j, b in enumerate(group):
                    full = seq[j, : K - 1 + int(ng[j])]
                    new_hist[b] = full[full.size(0) - (K - 1):].clone()
            out.index_copy_(0, idx, y.to(u.dtype))
        return residual + out, new_hist

    def decode_chunk(self, enc: torch.Tensor, enc_lens: torch.Tensor, embeds: torch.Tensor, token_num: torch.Tensor,
                     states: list[StreamState], chunk: ChunkConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """Streams with ≥ 1 token only. enc (B, T, d) valid to enc_lens; embeds (B, N, d) valid to token_num.
        Returns the argmax ids (B, N) and their log-probabilities; updates the decoder caches."""
        dec = self.model.decoder
        kernels = use_kernels(self.kernels, enc.device)
        dtype = dec.after_norm.weight.dtype
        x = embeds.to(dtype)
        mem = enc.to(dtype)
        n = token_num
        mem_lens = None if bool((enc_lens == mem.size(1)).all()) else enc_lens
        lb, c1 = chunk.decoder_look_back, chunk.chunk_size[1]
        n_att = len(dec.decoders)
        n2 = 0 if dec.decoders2 is None else len(dec.decoders2)
        run2 = n2 > 1  # FunASR: `if self.num_blocks - self.att_layer_num > 1`
        fsmn_layers = list(dec.decoders) + (list(dec.decoders2) if run2 else [])
        for st in states:
            if st.dec_fsmn is None:
                st.dec_fsmn = [None] * len(fsmn_layers)
        kvs = [s.dec_kv for s in states]
        new_kv = [[None] * n_att for _ in states]
        for i, layer in enumerate(fsmn_layers):
            residual = x
            t = layer.feed_forward(x, norm=layer.norm1)
            hist = [s.dec_fsmn[i] for s in states]
            x, new_hist = self._fsmn(layer.self_attn, layer.norm2(t), n, hist, residual, kernels)
            for b, st in enumerate(states):
                st.dec_fsmn[i] = new_hist[b]
            if i < n_att:
                pk, pv, pl = _past(kvs, i, x.device) if lb > 0 else (None, None, None)
                x, k, v = cross_attention_chunk(layer.src_attn, x, mem, mem_lens, pk, pv, pl, x, layer.norm3, kernels)
                if lb > 0:
                    for b, st in enumerate(states):
                        T_b = int(enc_lens[b])
                        kb, vb = k[b, :T_b], v[b, :T_b]
                        if st.dec_kv is not None:
                            kb, vb = torch.cat([st.dec_kv[i][0], kb]), torch.cat([st.dec_kv[i][1], vb])
                        new_kv[b][i] = (_keep_last(kb, lb * c1).clone(), _keep_last(vb, lb * c1).clone())
        if lb > 0:
            for b, st in enumerate(states):
                st.dec_kv = new_kv[b]
        for layer in dec.decoders3:
            x = layer.feed_forward(x, norm=layer.norm1)
        hidden = dec.after_norm(x)
        if kernels:
            return out_proj_argmax(hidden, dec.output_layer, kernels=True)
        best, ids = torch.log_softmax(dec.output_layer(hidden).float(), dim=-1).max(dim=-1)
        return ids, best

    # --- one chunk of every stream ----------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, feats: list[torch.Tensor | None], states: list[StreamState], final: list[bool],
             chunk: ChunkConfig, keep_encoder_out: bool = False) -> list[ChunkResult]:
        """One chunk per stream: feats[b] (n_b, F) float32 features of its chunk, or None for FunASR's tail
        chunk (final with < 960 samples). Returns one ChunkResult per stream; updates the states."""
        inputs = []
        starts = []  # LFR frame index of each stream's input frame 0
        for f, st in zip(feats, states):
            tail = f is None
            x = self._embed(f, st, chunk, tail)
            starts.append(st.frames_in - chunk.overlap)
            if not tail:
                st.frames_in += f.size(0)
            inputs.append(x)
        enc, lens = self.encode_chunk(inputs, states, chunk)
        cif = self.predict_chunk(enc, lens, states, final, chunk)
        token_num = cif.token_num.cpu()
        results = []
        for b in range(len(states)):
            k = int(token_num[b])
            slots = cif.fire_slots[b, :k].cpu().tolist()
            # slot 0 is the carried state, slot t + 1 frame t, slot T_b + 1 the tail (after the last frame)
            frames = [starts[b] + s - 1 for s in slots]
            results.append(ChunkResult([], frames, [], enc[b, : int(lens[b])].clone() if keep_encoder_out else None))
        active = [b for b in range(len(states)) if int(token_num[b]) > 0]
        if active:
            idx = torch.tensor(active, device=enc.device)
            sub_n = cif.token_num.index_select(0, idx)
            N = int(sub_n.max())
            ids, _ = self.decode_chunk(enc.index_select(0, idx), lens.index_select(0, idx.to(lens.device)),
                                       cif.embeds.index_select(0, idx)[:, :N], sub_n,
                                       [states[b] for b in active], chunk)
            ids = ids.cpu()
            for j, b in enumerate(active):
                raw = ids[j, : int(token_num[b])].tolist()
                results[b].raw_ids = raw
                keep = [i for i, t in enumerate(raw) if t not in (0, 1, 2)]
                results[b].token_ids = [raw[i] for i in keep]
                results[b].fire_frames = [results[b].fire_frames[i] for i in keep]
        return results
