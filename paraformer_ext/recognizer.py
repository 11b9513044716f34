"""The recognizer: a loaded FunASR Paraformer directory (model + frontend + tokens) that turns audio into
FunASR-compatible results. `paraformer_ext.load()` builds one."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ._ext import use_kernels
from .checkpoint import ModelLoadError, build_config, load_state_dict_strict, read_state_dict, resolve_model_dir
from .frontend import FrontendConfig, WavFrontend, load_cmvn
from .engine import Engine, EngineOptions
from .hotwords import DEFAULT_TOKEN_BONUS, HotwordGraph, HotwordList, as_hotword_list
from .lm_decode import DEFAULT_LM_WEIGHT
from .pipeline import Pipeline
from .results import Result
from .model.config import UnsupportedModelError
from .model.paraformer import Paraformer
from .text import TokenList


def offline_refusal(where) -> str:
    """Why a streaming directory is not decoded offline, and what to do instead."""
    return (f"{where or 'this model'} is a streaming Paraformer (config.yaml model: ParaformerStreaming). FunASR has no "
            "whole-utterance decoding for it: its generate() on a file runs the streaming loop in 600 ms chunks "
            "with the look-backs left at 0 unless passed. Decode it chunk by chunk: s = asr.stream(chunk_size=10); "
            "s.accept(samples, 16000); s.finish()['text'] (FunASR's documented look-backs 4 and 1 are the "
            "defaults); or load the offline model for transcribe()")


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise ValueError(f"dtype {dtype!r} not supported; use one of float32, float16, bfloat16")
    return names[dtype]


LM_FILE = "lm.arpa.gz"  # a model directory's own language model, used by lm="auto"


def _lm_decoder(lm, lm_weight, root: Path, tokens: TokenList):
    """load()'s lm argument → an LMDecoder or None."""
    from .lm import LMError, NgramLM
    from .lm_decode import LMDecoder, load_lm_decoder

    if lm is None or lm == "none":
        return None
    if lm == "auto":
        return load_lm_decoder(root / LM_FILE, tokens, lm_weight) if (root / LM_FILE).is_file() else None
    if isinstance(lm, NgramLM):
        return LMDecoder(lm, tokens, lm_weight)
    if isinstance(lm, (str, Path)):
        return load_lm_decoder(Path(lm), tokens, lm_weight)
    raise LMError(f"lm must be 'auto' (the model directory's {LM_FILE} if it has one), None / 'none', a path to an "
                  f"ARPA file or an NgramLM, got {type(lm).__name__}")


DEFAULT_ARRAY_RATE = 16000  # what an array passed without sample_rate is taken to be, as FunASR's generate(fs=16000)


class Recognizer:
    """A loaded FunASR model directory: its Pipeline (frontend → model → tokens) plus files, batching and long
    audio (the engine). Use `load()` to build one."""

    def __init__(self, pipeline: Pipeline, model_dir: Path | None = None, weights_path: Path | None = None,
                 hotwords=None, hotword_token_bonus: float = DEFAULT_TOKEN_BONUS):
        self.pipeline = pipeline
        self.model_dir = model_dir
        self.weights_path = weights_path
        self.hotwords = as_hotword_list(hotwords)  # applies to every transcribe call (FunASR's server list)
        self.hotword_token_bonus = hotword_token_bonus
        self.hotword_graph = self._compile_hotwords(self.hotwords, hotword_token_bonus)

    def _compile_hotwords(self, hotwords: HotwordList, token_bonus: float) -> HotwordGraph | None:
        """The graph of a non-empty list (None for an empty one: plain greedy decoding); what was clamped or
        skipped is said in a warning."""
        if not hotwords:
            return None
        graph = self.pipeline.compile_hotwords(hotwords, token_bonus=token_bonus)
        problems = list(hotwords.notes) + [f"hotword {w!r} skipped: {why}" for w, why in graph.skipped]
        if problems:
            warnings.warn("; ".join(problems), UserWarning, stacklevel=3)
        return graph

    model = property(lambda self: self.pipeline.model, doc="the Paraformer nn.Module")
    frontend = property(lambda self: self.pipeline.frontend, doc="the WavFrontend")
    tokens = property(lambda self: self.pipeline.tokens, doc="the TokenList")
    device = property(lambda self: self.pipeline.device)
    kernels = property(lambda self: self.pipeline.kernels, doc="whether the compiled ops run")
    sample_rate = property(lambda self: self.pipeline.sample_rate, doc="the model's rate (frontend_conf.fs)")

    lm = property(lambda self: self.pipeline.lm, doc="the LMDecoder that searches the posteriors, or None (greedy)")

    @property
    def quantization(self) -> str | None:
        return "int8" if getattr(self.model, "quantization", None) else None

    def quantize(self, output_layer: bool = False, split=None) -> "Recognizer":
        """int8 weights for the encoder and decoder, in place (quantize.quantize); returns self."""
        from .quantize import quantize

        quantize(self.model, output_layer, split)
        return self

    def save_quantized(self, path) -> Path:
        """Write the int8 model to `path`, stamped with the model.pt it came from."""
        from .quantize import save_quantized

        return save_quantized(self.model, path, source=self.weights_path)

    @classmethod
    def load(cls, model_dir=None, device="cpu", dtype=torch.float32, kernels: bool | None = None, quantize: str | None = None,
             quantize_output_layer: bool = False, quantized_path=None, cif_threshold: str = "tail", hotwords=None,
             hotword_token_bonus: float = DEFAULT_TOKEN_BONUS, lm="auto",
             lm_weight: float = DEFAULT_LM_WEIGHT) -> "Recognizer":
        if cif_threshold not in ("tail", "dynamic"):
            raise ValueError(f"cif_threshold must be 'tail' (FunASR's, the default) or 'dynamic' (the paper's "
                             f"β = Σα / ⌈Σα⌉), got {cif_threshold!r}")
        if model_dir is None:
            from .default_model import default_model_dir

            model_dir = default_model_dir()
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
            with torch.device("meta"):  # no random initialisation to overwrite; the weights are held once
                model = Paraformer(cfg)
            load_state_dict_strict(model, read_state_dict(files.weights), str(files.weights), assign=True)
        elif quantize == "int8":
            from .quantize import load_int8

            model = load_int8(cfg, files.weights, quantize_output_layer, quantized_path)
        else:
            raise ValueError(f"quantize={quantize!r} not supported; use quantize='int8' or None")
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device='cuda' requested but torch sees no CUDA device; use device='cpu'")
        model = model.eval().requires_grad_(False).to(device).cast(_dtype(dtype))
        model.set_kernels(use_kernels(kernels, device))
        model.predictor.threshold_mode = cif_threshold
        decoder = _lm_decoder(lm, lm_weight, Path(files.root), tokens)
        return cls(Pipeline(frontend.to(device), model, tokens, device, decoder), files.root, files.weights,
                   hotwords, hotword_token_bonus)

    # --- streaming (ParaformerStreaming directories) -------------------------------------------------------

    @property
    def streaming(self) -> bool:
        """Whether this is a streaming model (config.yaml model: ParaformerStreaming): decoded with stream()."""
        return bool(self.model.cfg.streaming)

    def stream(self, chunk_size=10, encoder_look_back: int = 4, decoder_look_back: int = 1):
        """A new stream.Stream over this streaming model: chunk_size C (FunASR's [0, C, C // 2]: C · 60 ms per
        chunk, 10 = 600 ms, 8 = 480 ms) or FunASR's [c0, c1, c2]; encoder_look_back / decoder_look_back: FunASR's
        encoder_chunk_look_back (−1: all) / decoder_chunk_look_back, in chunks (its documented 4 and 1)."""
        from .stream import chunk_config

        return self._streaming_engine().stream(chunk_config(chunk_size, encoder_look_back, decoder_look_back))

    def decode_streams(self, streams) -> int:
        """Decode every ready chunk of these streams (made with stream(); fed with accept(..., decode=False) /
        finish(decode=False)), one batched model step over all of them per chunk; each stream's result equals
        decoding it alone. Returns the number of batched steps."""
        return self._streaming_engine().decode_streams(list(streams))

    def _streaming_engine(self):
        if not self.streaming:
            raise UnsupportedModelError(
                f"{self.model_dir or 'this model'} is an offline Paraformer (config.yaml model: Paraformer); "
                "stream() needs a streaming one (model: ParaformerStreaming, e.g. paraformer-zh-streaming). "
                "Use transcribe() for this model")
        if getattr(self, "_stream_engine", None) is None:
            from .stream import StreamingEngine

            self._stream_engine = StreamingEngine(self.pipeline)
        return self._stream_engine

    # --- transcription ---------------------------------------------------------------------------------

    def engine(self, batch_size: int | None = None, **options) -> "Engine":
        """A batched inference engine over this model (options: engine.EngineOptions; batch_size is
        max_batch_size). Offline models only (streaming ones: stream())."""
        if self.streaming:
            raise UnsupportedModelError(offline_refusal(self.model_dir))
        if batch_size is not None:
            if batch_size < 1:
                raise ValueError(f"batch_size must be >= 1, got {batch_size}")
            options["max_batch_size"] = batch_size
        return Engine(self.pipeline, EngineOptions(**options))

    def hotwords_for_call(self, hotwords=None, hotword_token_bonus: float | None = None) -> HotwordGraph | None:
        """The graph a call decodes with: the load-time list merged with `hotwords` (the call's weights win),
        compiled with the call's token bonus (default: load's). The load-time graph when nothing changes."""
        bonus = self.hotword_token_bonus if hotword_token_bonus is None else hotword_token_bonus
        if hotwords is None and bonus == self.hotword_token_bonus:
            return self.hotword_graph
        return self._compile_hotwords(self.hotwords.merged(as_hotword_list(hotwords)), bonus)

    def transcribe_iter(self, inputs, *, keys: Sequence[str] | None = None, sample_rate: int | None = DEFAULT_ARRAY_RATE,
                        hotwords=None, hotword_token_bonus: float | None = None,
                        **options) -> Iterator[tuple[int, Result]]:
        """Like `transcribe`, but yields (input index, result) as soon as each input is done."""
        if isinstance(inputs, (str, os.PathLike, np.ndarray, torch.Tensor)):
            inputs = [inputs]
        options["hotwords"] = self.hotwords_for_call(hotwords, hotword_token_bonus)
        yield from self.engine(**options).run(list(inputs), keys, sample_rate=sample_rate)

    def transcribe(self, inputs, *, batch_size: int | None = None, timestamps: bool = False, keys: Sequence[str] | None = None,
                   sample_rate: int | None = DEFAULT_ARRAY_RATE, hotwords=None, hotword_token_bonus: float | None = None,
                   **options) -> list[Result]:
        """Transcribe files or arrays (float in [-1, 1], or integer PCM). inputs: one path/array or a list.

        sample_rate: the rate of array inputs, 16000 unless said (FunASR's `fs` default; None: the model's
        own rate); files carry their rate in their header. Everything is resampled to the model's rate.
        Returns one results.Result per input, in input order: {"key", "text", "token_ids"} (+ "timestamp" when
        timestamps=True, and "segments" for long inputs that were cut), or {"key", "error"} for an input that
        could not be read (the others are still transcribed). batch_size caps the utterances per batch;
        other options (max_batch_frames, long_audio_s, segmenter, window_s, progress, ...) go to the engine.
        hotwords: {word: weight} (or a list of words, a HotwordList, a pathlib.Path to a FunASR hotword file),
        merged with load()'s list, this call's weights winning; hotword_token_bonus: β for this call (default:
        load()'s). With any hotwords each result has "hotwords": [{"word", "start", "end"[, "timestamp"]}, ...],
        the occurrences in its token_ids (start/end index token_ids, end exclusive).
        """
        if isinstance(inputs, (str, os.PathLike, np.ndarray, torch.Tensor)):
            inputs = [inputs]
        inputs = list(inputs)
        results: list[Result | None] = [None] * len(inputs)
        for i, r in self.transcribe_iter(inputs, keys=keys, timestamps=timestamps, batch_size=batch_size,
                                         sample_rate=sample_rate, hotwords=hotwords,
                                         hotword_token_bonus=hotword_token_bonus, **options):
            results[i] = r
        return results  # type: ignore[return-value]


def load(model_dir=None, device="cpu", dtype=torch.float32, kernels: bool | None = None, quantize: str | None = None,
         quantize_output_layer: bool = False, quantized_path=None, cif_threshold: str = "tail", hotwords=None,
         hotword_token_bonus: float = DEFAULT_TOKEN_BONUS, lm="auto", lm_weight: float = DEFAULT_LM_WEIGHT) -> Recognizer:
    """Load a FunASR Paraformer model directory (model.pt, config.yaml, am.mvn, tokens.json|tokens.txt); None:
    the small model shipped with paraformer_ext (default_model.py; it knows only espeak-ng synthetic Mandarin).

    device: "cpu" or "cuda"; dtype: float32 / float16 / bfloat16 for encoder and decoder (the predictor
    and CIF stay float32); kernels: the compiled ops (True: or an error saying why they cannot run), the plain
    PyTorch reference everywhere (False), or the compiled ops where built, else the reference with a warning
    (None, the default). Both give the same tokens, so a speed-up can always be measured against the reference.
    quantize="int8": int8 weights for the encoder and decoder Linear layers (quantize.py); the int8 model is
    saved beside model.pt (or at quantized_path) on first use and reused while model.pt is unchanged.
    quantize_output_layer: quantize the decoder's output layer too (off by default, as in FunASR).
    cif_threshold: "tail" (FunASR's: a 0.45 tail weight after the last frame, so parity holds) or "dynamic"
    (the paper's §2.2: fire at β = Σα / ⌈Σα⌉, so exactly ⌈Σα⌉ tokens fire).
    hotwords: {word: weight 1-100 or None}, a list of words, a HotwordList or a pathlib.Path to a FunASR hotword
    file (`word weight` per line), used by every transcribe call (hotwords.py: weights, tokenization);
    hotword_token_bonus: β, the bonus per matched token in log-posterior units (FunASR's 2.0 by default).
    lm: a token n-gram language model that the decoder's posteriors are searched with (lm_decode.py): "auto"
    (the default) uses the model directory's lm.arpa.gz when it has one (the shipped model does; FunASR
    directories do not, so their results stay FunASR's), None / "none" decodes greedily, or a path to an ARPA
    file / an NgramLM over the model's tokens (`paraformer-ext train-lm` makes one); lm_weight: its weight λ.
    """
    return Recognizer.load(model_dir, device=device, dtype=dtype, kernels=kernels, quantize=quantize,
                           quantize_output_layer=quantize_output_layer, quantized_path=quantized_path,
                           cif_threshold=cif_threshold, hotwords=hotwords, hotword_token_bonus=hotword_token_bonus,
                           lm=lm, lm_weight=lm_weight)
