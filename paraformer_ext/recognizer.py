"""The recognizer: a loaded FunASR Paraformer directory (model + frontend + tokens) that turns audio into
FunASR-compatible results. `paraformer_ext.load()` builds one."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ._ext import kernels_available_for
from .audio import AudioError, load_audio
from .checkpoint import ModelLoadError, build_config, load_state_dict_strict, read_state_dict, resolve_model_dir
from .frontend import FrontendConfig, WavFrontend, load_cmvn
from .model.paraformer import Paraformer
from .text import TokenList, postprocess

AudioInput = "str | os.PathLike | np.ndarray | torch.Tensor"


def _key_for(item, index: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return Path(item).name.split(".")[0] if Path(item).name else str(item)  # FunASR: file name without extension
    return f"array_{index}"


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise ValueError(f"dtype {dtype!r} not supported; use one of float32, float16, bfloat16")
    return names[dtype]


class Recognizer:
    """model: Paraformer; frontend: WavFrontend; tokens: TokenList. Use `load()` to build one."""

    def __init__(self, model: Paraformer, frontend: WavFrontend, tokens: TokenList, device: torch.device, kernels: bool, model_dir: Path | None = None):
        self.model = model
        self.frontend = frontend
        self.tokens = tokens
        self.device = device
        self.kernels = kernels
        self.model_dir = model_dir

    @property
    def sample_rate(self) -> int:
        return self.frontend.cfg.fs

    @property
    def min_samples(self) -> int:
        """One analysis window (25 ms = 400 samples at 16 kHz): shorter audio is refused with a message."""
        return int(self.frontend.cfg.frame_length * self.frontend.cfg.fs / 1000)

    @classmethod
    def load(cls, model_dir, device="cpu", dtype=torch.float32, kernels: bool = True) -> "Recognizer":
        files = resolve_model_dir(model_dir)
        tokens = TokenList(files.tokens) if isinstance(files.tokens, list) else TokenList.load(files.tokens)
        fconf = dict(files.config.get("frontend_conf") or {})
        try:
            fcfg = FrontendConfig.from_dict(fconf)
        except ValueError as e:
            raise ModelLoadError(f"{files.config_path}: frontend_conf: {e}") from e
        cmvn = load_cmvn(files.cmvn)
        frontend = WavFrontend(fcfg, cmvn)
        if cmvn.shape[1] != frontend.output_size:
            raise ModelLoadError(
                f"{files.cmvn}: CMVN has {cmvn.shape[1]} dims but the frontend produces {frontend.output_size} "
                f"(n_mels {fcfg.n_mels} x lfr_m {fcfg.lfr_m})"
            )
        cfg = build_config(files, len(tokens), frontend.output_size)
        model = Paraformer(cfg)
        load_state_dict_strict(model, read_state_dict(files.weights), str(files.weights))
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device='cuda' requested but torch sees no CUDA device; use device='cpu'")
        model = model.eval().requires_grad_(False).to(device).cast(_dtype(dtype))
        if kernels and not kernels_available_for(device):
            raise RuntimeError(
                f"kernels=True but the compiled paraformer_ext ops are not built for {device.type} "
                f"(build_info: {__import__('paraformer_ext').build_info()}); rebuild, or pass kernels=False"
            )
        model.set_kernels(kernels)
        return cls(model, frontend.to(device), tokens, device, kernels, files.root)

    # --- transcription ---------------------------------------------------------------------------------

    def _read(self, item) -> torch.Tensor:
        wave = load_audio(item, target_sr=self.sample_rate)
        if wave.numel() < self.min_samples:
            what = f"{item}" if isinstance(item, (str, os.PathLike)) else "array input"
            raise AudioError(
                f"{what}: audio is {wave.numel()} samples ({1000 * wave.numel() / self.sample_rate:.1f} ms), shorter than one "
                f"{self.frontend.cfg.frame_length:g} ms analysis frame ({self.min_samples} samples); nothing to transcribe"
            )
        return wave

    @torch.no_grad()
    def recognize_waves(self, waves: Sequence[torch.Tensor], timestamps: bool = False) -> list[dict]:
        """Recognize one padded batch of 1-D float waveforms (16 kHz). Returns one dict per wave, in order."""
        lengths = torch.tensor([w.numel() for w in waves], dtype=torch.long)
        batch = torch.zeros(len(waves), int(lengths.max()), dtype=torch.float32)
        for i, w in enumerate(waves):
            batch[i, : w.numel()] = w
        feats, flens = self.frontend(batch.to(self.device), lengths.to(self.device))
        out = self.model.greedy(feats, flens)
        results = []
        token_num = out.token_num.cpu()
        ids = out.token_ids.cpu()
        fires = out.fires.float().cpu()
        alphas = out.alphas.float().cpu()
        enc_lens = out.encoder_lengths.cpu()
        for b in range(len(waves)):
            n, t = int(token_num[b]), int(enc_lens[b])
            # the utterance's own fires/alphas incl. its tail slot, as FunASR 1.4.16 passes them
            results.append(
                postprocess(ids[b, :n].tolist(), self.tokens, fires[b, : t + 1], alphas[b, : t + 1], timestamps=timestamps)
            )
        return results

    def transcribe(self, inputs, *, batch_size: int = 8, timestamps: bool = False, keys: Sequence[str] | None = None) -> list[dict]:
        """Transcribe files or arrays. inputs: a path/array or a list of them. Returns one dict per input, in
        input order: {"key", "text", "token_ids"} (+ "timestamp" when timestamps=True), or {"key", "error"}
        for an input that could not be read (the others are still transcribed)."""
        if isinstance(inputs, (str, os.PathLike, np.ndarray, torch.Tensor)):
            inputs = [inputs]
        inputs = list(inputs)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        keys = list(keys) if keys is not None else [_key_for(x, i) for i, x in enumerate(inputs)]
        results: list[dict | None] = [None] * len(inputs)
        waves = {}
        for i, item in enumerate(inputs):
            try:
                waves[i] = self._read(item)
            except AudioError as e:
                results[i] = {"key": keys[i], "error": str(e)}
        order = sorted(waves, key=lambda i: waves[i].numel(), reverse=True)
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            for i, r in zip(idx, self.recognize_waves([waves[i] for i in idx], timestamps=timestamps)):
                results[i] = {"key": keys[i], **r}
        return results  # type: ignore[return-value]


def load(model_dir, device="cpu", dtype=torch.float32, kernels: bool = True) -> Recognizer:
    """Load a FunASR Paraformer model directory (model.pt, config.yaml, am.mvn, tokens.json|tokens.txt).

    device: "cpu" or "cuda"; dtype: float32 / float16 / bfloat16 for encoder and decoder (the predictor
    and CIF stay float32); kernels: use the compiled ops (True) or the plain PyTorch reference (False).
    Both give the same tokens, so a speed-up can always be measured against the reference.
    """
    return Recognizer.load(model_dir, device=device, dtype=dtype, kernels=kernels)
