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
    """frontend (WavFrontend) → model (Paraformer) → tokens (TokenList), on `device`."""

    def __init__(self, frontend: WavFrontend, model: Paraformer, tokens: TokenList, device: torch.device):
        self.frontend = frontend
        self.model = model
        self.tokens = tokens
        self.device = torch.device(device)

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
               timer=None, hotwords: HotwordGraph | None = None) -> list[Result]:
        """features (B, T, D) float32, lengths (B,) → one result {"text", "token_ids"[, "timestamp"]} per item
        (no "key": the caller names its inputs). timer: optional, mark(stage) after each model stage and "text".
        hotwords: a compiled graph (compile_hotwords): the decoder's posteriors are searched with it (ops/hotwords.py)
        instead of taken greedily, and each result gets "hotwords": the occurrences found (text.postprocess).
        None: greedy decoding, exactly as without this argument."""
        if hotwords is not None and not isinstance(hotwords, HotwordGraph):
            raise TypeError(f"hotwords must be a HotwordGraph (Pipeline.compile_hotwords), got {type(hotwords).__name__}")
        search = hotwords is not None and len(hotwords) > 0
        out = self.model.greedy(features, lengths, timer=timer, log_posteriors=search)
        token_num, ids = out.token_num.cpu(), out.token_ids.cpu()
        logp = out.log_posteriors.cpu() if search else None
        enc_lens = out.encoder_lengths.cpu()
        fires = out.fires.float().cpu() if timestamps else None
        alphas = out.alphas.float().cpu() if timestamps else None
        results = []
        for b in range(ids.size(0)):
            n, t = int(token_num[b]), int(enc_lens[b])
            item_ids, found = ids[b, :n], None
            if search:
                item_ids, fired = hotwords.decode(logp[b, :n], kernels=self.kernels)
                found = [(hotwords.words[k], s, e) for k, s, e in fired.tolist()]
            elif hotwords is not None:
                found = []
            results.append(postprocess(item_ids.tolist(), self.tokens,
                                       None if fires is None else fires[b, : t + 1],
                                       None if alphas is None else alphas[b, : t + 1], timestamps=timestamps,
                                       hotwords=found))
        if timer is not None:
            timer.mark("text")
        return results

    def recognize(self, wave: torch.Tensor, lengths: torch.Tensor, *, timestamps: bool = False,
                  timer=None, hotwords: HotwordGraph | None = None) -> list[Result]:
        """wave (B, N) at `sample_rate` on `device`, zero padded, lengths (B,) → one result per item
        (hotwords: as in decode)."""
        with torch.no_grad():
            feats, flens = self.features(wave, lengths)
        if timer is not None:
            timer.mark("frontend")
        return self.decode(feats, flens, timestamps=timestamps, timer=timer, hotwords=hotwords)
