"""The recognizer: a loaded FunASR Paraformer directory (model + frontend + tokens) that turns audio into
FunASR-compatible results. `paraformer_ext.load()` builds one."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ._ext import kernels_available_for
from .checkpoint import ModelLoadError, build_config, load_state_dict_strict, read_state_dict, resolve_model_dir
from .frontend import FrontendConfig, WavFrontend, load_cmvn
from .engine import Engine, EngineOptions
from .model.paraformer import Paraformer
from .text import TokenList


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

    def __init__(self, model: Paraformer, frontend: WavFrontend, tokens: TokenList, device: torch.device, kernels: bool,
                 model_dir: Path | None = None, weights_path: Path | None = None):
        self.model = model
        self.frontend = frontend
        self.tokens = tokens
        self.device = device
        self.kernels = kernels
        self.model_dir = model_dir
        self.weights_path = weights_path
        self.quantization = "int8" if getattr(model, "quantization", None) else None

    @property
    def sample_rate(self) -> int:
        return self.frontend.cfg.fs

    @property
    def min_samples(self) -> int:
        """One analysis window (25 ms = 400 samples at 16 kHz): shorter audio is refused with a message."""
        return int(self.frontend.cfg.frame_length * self.frontend.cfg.fs / 1000)

    @classmethod
    def load(cls, model_dir, device="cpu", dtype=torch.float32, kernels: bool = True, quantize: str | None = None,
             quantize_output_layer: bool = False, quantized_path=None) -> "Recognizer":
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
        if quantize is None:
            model = Paraformer(cfg)
            load_state_dict_strict(model, read_state_dict(files.weights), str(files.weights))
        else:
            model = _load_quantized(cfg, files.weights, quantize, quantize_output_layer, quantized_path)
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
        return cls(model, frontend.to(device), tokens, device, kernels, files.root, files.weights)

    # --- transcription ---------------------------------------------------------------------------------

    def engine(self, batch_size: int | None = None, **options) -> "Engine":
        """A batched inference engine over this model (options: engine.EngineOptions; batch_size is
        max_batch_size)."""
        if batch_size is not None:
            if batch_size < 1:
                raise ValueError(f"batch_size must be >= 1, got {batch_size}")
            options["max_batch_size"] = batch_size
        return Engine(self, EngineOptions(**options))

    def transcribe_iter(self, inputs, *, keys: Sequence[str] | None = None, **options) -> Iterator[tuple[int, dict]]:
        """Like `transcribe`, but yields (input index, result) as soon as each input is done."""
        if isinstance(inputs, (str, os.PathLike, np.ndarray, torch.Tensor)):
            inputs = [inputs]
        yield from self.engine(**options).run(list(inputs), keys)

    def transcribe(self, inputs, *, batch_size: int | None = None, timestamps: bool = False, keys: Sequence[str] | None = None,
                   **options) -> list[dict]:
        """Transcribe files or arrays (16 kHz float in [-1, 1], or integer PCM). inputs: one path/array or a list.

        Returns one dict per input, in input order: {"key", "text", "token_ids"} (+ "timestamp" when
        timestamps=True, and "segments"/"note" for long inputs that were cut), or {"key", "error"} for an input
        that could not be read (the others are still transcribed). batch_size caps the utterances per batch;
        other options (max_batch_frames, long_audio_s, segmenter, window_s, progress, ...) go to the engine.
        """
        if isinstance(inputs, (str, os.PathLike, np.ndarray, torch.Tensor)):
            inputs = [inputs]
        inputs = list(inputs)
        results: list[dict | None] = [None] * len(inputs)
        for i, r in self.transcribe_iter(inputs, keys=keys, timestamps=timestamps, batch_size=batch_size, **options):
            results[i] = r
        return results  # type: ignore[return-value]


def _load_quantized(cfg, weights: Path, quantize: str, output_layer: bool, quantized_path) -> Paraformer:
    """An int8 model: from a saved int8 file made from this model.pt (the float model is never built: its
    skeleton is laid out on the meta device), else quantized now from model.pt and saved."""
    from .quantize import default_int8_path, matching_saved, prepare_int8_shells, quantize_model, save_quantized

    if quantize != "int8":
        raise ValueError(f"quantize={quantize!r} not supported; use quantize='int8' or None")
    path = Path(quantized_path) if quantized_path is not None else default_int8_path(weights)
    payload = matching_saved(path, weights, output_layer)
    if payload is not None:
        with torch.device("meta"):
            model = prepare_int8_shells(Paraformer(cfg), payload["quantization"])
        model = model.to_empty(device="cpu")
        load_state_dict_strict(model, payload["state_dict"], str(path))
        return model
    model = Paraformer(cfg)
    load_state_dict_strict(model, read_state_dict(weights), str(weights))
    quantize_model(model, output_layer)  # in float32, before any cast: exact scales, dtype-independent file
    try:
        save_quantized(model, path, source=weights)
    except OSError as e:
        import warnings

        warnings.warn(f"could not save the int8 model to {path} ({e}); it will be requantized at the next load",
                      stacklevel=3)
    return model


def load(model_dir, device="cpu", dtype=torch.float32, kernels: bool = True, quantize: str | None = None,
         quantize_output_layer: bool = False, quantized_path=None) -> Recognizer:
    """Load a FunASR Paraformer model directory (model.pt, config.yaml, am.mvn, tokens.json|tokens.txt).

    device: "cpu" or "cuda"; dtype: float32 / float16 / bfloat16 for encoder and decoder (the predictor
    and CIF stay float32); kernels: use the compiled ops (True) or the plain PyTorch reference (False).
    Both give the same tokens, so a speed-up can always be measured against the reference.
    quantize="int8": int8 weights for the encoder and decoder Linear layers (quantize.py); the int8 model is
    saved beside model.pt (or at quantized_path) on first use and reused while model.pt is unchanged.
    quantize_output_layer: quantize the decoder's output layer too (off by default, as in FunASR).
    """
    return Recognizer.load(model_dir, device=device, dtype=dtype, kernels=kernels, quantize=quantize,
                           quantize_output_layer=quantize_output_layer, quantized_path=quantized_path)
