"""The narrow interface between a loaded model and whoever feeds it: waveforms at the model's own sample rate
→ features → Paraformer → tokens → FunASR results, one padded batch at a time.

The engine (files, long audio, batching), the server (segments of many connections through one queue) and the
trainer's validation (features it already has) all use this object and nothing else of the recognizer. It reads
no files, cuts nothing and batches nothing: that is the engine's job.
"""
from __future__ import annotations

import torch

from .frontend import WavFrontend
from .hotwords import DEFAULT_TOKEN_BONUS, HotwordGraph, HotwordList
from .model.paraformer import Paraformer
from .results import Result
from .text import TokenList, postprocess


class Pipeline:
    """frontend (WavFrontend) → model (Paraformer) → tokens (TokenList), on `device`; `lm`: an LMDecoder
    (lm_decode.py) that searches every item's posteriors with a language model, or None (greedy)."""

    def __init__(self, frontend: WavFrontend, model: Paraformer, tokens: TokenList, device: torch.device,
                 lm=None):
        self.frontend = frontend
        self.model = model
        self.tokens = tokens
        self.device = torch.device(device)
        self.lm = lm

    @property
    def kernels(self) -> bool:
        """Whether the model runs the compiled ops (resolved at load: see _ext.use_kernels)."""
        return self.model.kernels

    @property
    def sample_rate(self) -> int:
        """The rate the model was trained at (config.yaml frontend_conf.fs): waveforms must arrive at it."""
        return self.frontend.cfg.fs

    @property
    def min_samples(self) -> int:
        """One analysis window (25 ms = 400 samples at 16 kHz): shorter audio has nothing to transcribe."""
        return self.frontend.cfg.window_size

    def feature_frames(self, num_samples: int) -> int:
        """Feature frames the frontend makes of num_samples (batch planning without computing them)."""
        return self.frontend.cfg.feature_frames(num_samples)

    def features(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wave (B, N) float at `sample_rate`, zero padded, lengths (B,) → features (B, T, D) float32, (B,)."""
        return self.frontend(wave, lengths)

    def compile_hotwords(self, hotwords, token_bonus: float = DEFAULT_TOKEN_BONUS, **search) -> HotwordGraph:
        """A hotword list (anything HotwordList accepts: {word: weight}, words, a HotwordList) compiled for
        this model's tokens; search: beam, topk, margin (hotwords.HotwordList.compile). Compile once per list
        (a server: once per connection, after merging its list with the client's) and pass the graph to
        decode / recognize for every batch."""
        return HotwordList(hotwords).compile(self.tokens, token_bonus=token_bonus, **search)

    @torch.no_grad()
    def decode(self, features: torch.Tensor, lengths: torch.Tensor, *, timestamps: bool = False,
               timer=None, hotwords=None) -> list[Result]:
        """features (B, T, D) float32, lengths (B,) → one result {"text", "token_ids"[, "timestamp"]} per item
        (no "key": the caller names its inputs). timer: optional, mark(stage) after each model stage and "text".
        hotwords: a compiled graph (compile_hotwords): the decoder's posteriors are searched with it (ops/hotwords.py)
        instead of taken greedily, and each result gets "hotwords": the occurrences found (text.postprocess).
        None: greedy decoding, exactly as without this argument. A sequence of B graphs or None: each item with
        its own (a server's batch of connections with different lists), see _decode_mixed."""
        if self.model.cfg.streaming:
            from .model.config import UnsupportedModelError
            from .recognizer import offline_refusal

            raise UnsupportedModelError(offline_refusal(None))
        if hotwords is None or isinstance(hotwords, HotwordGraph):
            return self._decode(features, lengths, timestamps, timer, [hotwords] * features.size(0))
        if not isinstance(hotwords, (list, tuple)):
            raise TypeError(f"hotwords must be a HotwordGraph (Pipeline.compile_hotwords) or a list of them (or None) "
                            f"per item, got {type(hotwords).__name__}")
        graphs = list(hotwords)
        if len(graphs) != features.size(0):
            raise ValueError(f"hotwords: one graph (or None) per item, got {len(graphs)} for a batch of {features.size(0)}")
        for g in graphs:
            if g is not None and not isinstance(g, HotwordGraph):
                raise TypeError(f"hotwords must be HotwordGraphs (Pipeline.compile_hotwords), got {type(g).__name__}")
        return self._decode_mixed(features, lengths, timestamps, timer, graphs)

    def _decode_mixed(self, features, lengths, timestamps, timer, graphs) -> list[Result]:
        """Items with a non-empty graph and items without: one model run for each kind present. The searching
        run's argmax (log_softmax + max) is not the greedy run's fused argmax bit for bit (ties after
        rounding), so items without hotwords keep the greedy run and get exactly their greedy result; the
        items with hotwords share one run whatever their graphs, since only the search after it differs.
        Both runs give each item its batch-1 result (Paraformer.greedy), so splitting changes no item. With an
        LM every item is searched, so one run serves all."""
        searched = [b for b, g in enumerate(graphs) if g is not None and len(g) > 0]
        if not searched or len(searched) == len(graphs) or self.lm is not None:
            return self._decode(features, lengths, timestamps, timer, graphs)
        plain = [b for b in range(len(graphs)) if b not in set(searched)]
        out: list = [None] * len(graphs)
        for idx in (plain, searched):
            sel = torch.tensor(idx, device=features.device)
            sub_len = lengths.index_select(0, sel.to(lengths.device))
            sub = features.index_select(0, sel)[:, : int(sub_len.max())]
            for b, r in zip(idx, self._decode(sub, sub_len, timestamps, timer, [graphs[b] for b in idx])):
                out[b] = r
        return out

    def search(self, logp: torch.Tensor, graph: HotwordGraph | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One item's log-posteriors (N, V) → (ids (N,), fired (F, 3)) as decode chooses them: with the LM when
        there is one (hotwords included), else the hotword search, else argmax."""
        if self.lm is not None:
            return self.lm.decode(logp, graph)
        if graph is not None and len(graph) > 0:
            return graph.decode(logp, kernels=self.kernels)
        return logp.argmax(-1), torch.empty(0, 3, dtype=torch.int64)

    def _decode(self, features, lengths, timestamps, timer, graphs) -> list[Result]:
        """One model run; `graphs`: per item. The posteriors are kept only when an item searches them."""
        search = self.lm is not None or any(g is not None and len(g) > 0 for g in graphs)
        out = self.model.greedy(features, lengths, timer=timer, log_posteriors=search)
        token_num, ids = out.token_num.cpu(), out.token_ids.cpu()
        logp = out.log_posteriors.cpu() if search else None
        enc_lens = out.encoder_lengths.cpu()
        fires = out.fires.float().cpu() if timestamps else None
        alphas = out.alphas.float().cpu() if timestamps else None
        results = []
        for b in range(ids.size(0)):
            n, t, g = int(token_num[b]), int(enc_lens[b]), graphs[b]
            item_ids, found = ids[b, :n], None
            if self.lm is not None or (g is not None and len(g) > 0):
                item_ids, fired = self.search(logp[b, :n], g)
            if g is not None:
                found = [(g.words[k], s, e) for k, s, e in fired.tolist()] if len(g) > 0 else []
            results.append(postprocess(item_ids.tolist(), self.tokens,
                                       None if fires is None else fires[b, : t + 1],
                                       None if alphas is None else alphas[b, : t + 1], timestamps=timestamps,
                                       hotwords=found))
        if timer is not None:
            timer.mark("text")
        return results

    def recognize(self, wave: torch.Tensor, lengths: torch.Tensor, *, timestamps: bool = False,
                  timer=None, hotwords=None) -> list[Result]:
        """wave (B, N) at `sample_rate` on `device`, zero padded, lengths (B,) → one result per item
        (hotwords: as in decode: a graph, None, or one of either per item)."""
        with torch.no_grad():
            feats, flens = self.features(wave, lengths)
        if timer is not None:
            timer.mark("frontend")
        return self.decode(feats, flens, timestamps=timestamps, timer=timer, hotwords=hotwords)
