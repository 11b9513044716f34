"""The narrow interface between a loaded model and whoever feeds it: waveforms at the model's own sample rate
→ features → Paraformer → tokens → FunASR results, one padded batch at a time.

The engine (files, long audio, batching), the server (segments of many connections through one queue) and the
trainer's validation (features it already has) all use this object and nothing else of the recognizer. It reads
no files, cuts nothing and batches nothing: that is the engine's job.
"""
from __future__ import annotations

import torch

from .frontend import WavFrontend
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

    @torch.no_grad()
    def decode(self, features: torch.Tensor, lengths: torch.Tensor, *, timestamps: bool = False,
               timer=None) -> list[Result]:
        """features (B, T, D) float32, lengths (B,) → one result {"text", "token_ids"[, "timestamp"]} per item
        (no "key": the caller names its inputs). timer: optional, mark(stage) after each model stage and "text"."""
        out = self.model.greedy(features, lengths, timer=timer)
        token_num, ids = out.token_num.cpu(), out.token_ids.cpu()
        enc_lens = out.encoder_lengths.cpu()
        fires = out.fires.float().cpu() if timestamps else None
        alphas = out.alphas.float().cpu() if timestamps else None
        results = []
        for b in range(ids.size(0)):
            n, t = int(token_num[b]), int(enc_lens[b])
            results.append(postprocess(ids[b, :n].tolist(), self.tokens,
                                       None if fires is None else fires[b, : t + 1],
                                       None if alphas is None else alphas[b, : t + 1], timestamps=timestamps))
        if timer is not None:
            timer.mark("text")
        return results

    def recognize(self, wave: torch.Tensor, lengths: torch.Tensor, *, timestamps: bool = False,
                  timer=None) -> list[Result]:
        """wave (B, N) at `sample_rate` on `device`, zero padded, lengths (B,) → one result per item."""
        with torch.no_grad():
            feats, flens = self.features(wave, lengths)
        if timer is not None:
            timer.mark("frontend")
        return self.decode(feats, flens, timestamps=timestamps, timer=timer)
