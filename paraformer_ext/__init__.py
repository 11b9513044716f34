"""paraformer_ext: FunASR-exact Paraformer speech recognition with C++/CUDA kernels.

    import paraformer_ext
    asr = paraformer_ext.load("path/to/funasr/model_dir", device="cpu")
    for r in asr.transcribe(["a.wav", "b.wav"], timestamps=True):
        print(r["key"], r["text"], r["timestamp"])
    # hotwords (contextual biasing, no retraining): for every call, or per call (merged, the call's weights win)
    asr = paraformer_ext.load("path/to/model_dir", hotwords={"阿里巴巴": 20})
    asr.transcribe("a.wav", hotwords={"通义": 30})[0]["hotwords"]   # [{"word", "start", "end"}, ...]
    # streaming model directories (ParaformerStreaming): chunk by chunk
    s = paraformer_ext.load("paraformer-zh-streaming-dir").stream(chunk_size=10)
    s.accept(samples, 16000); s.partial()["text"]; s.finish()["text"]
"""
from ._ext import build_info, has_cuda_kernels, has_kernels
from .audio import AudioError, load_audio
from .checkpoint import ModelLoadError
from .hotwords import HotwordError, HotwordGraph, HotwordList
from .model.config import UnsupportedModelError
from .ops.cif import CifOutput, cif, cif_cumsum, cif_fn, cif_ref
from .ops.cif_stream import CifStreamOutput, cif_stream, cif_stream_fn, cif_stream_ref
from .ops.fsmn import fsmn_memory, fsmn_memory_fn, fsmn_memory_ref
from .ops.hotwords import hotword_decode, hotword_decode_fn, hotword_decode_ref
from .ops.out_proj import out_proj_argmax, out_proj_argmax_fn, out_proj_argmax_ref
from .quantize import Int8Linear, quantize, save_quantized
from .recognizer import Recognizer, load
from .stream import Stream, StreamError

__version__ = "0.1.0"

__all__ = [
    "load",
    "Recognizer",
    "quantize",
    "save_quantized",
    "Int8Linear",
    "load_audio",
    "AudioError",
    "ModelLoadError",
    "HotwordList",
    "HotwordGraph",
    "HotwordError",
    "UnsupportedModelError",
    "build_info",
    "has_kernels",
    "has_cuda_kernels",
    "cif",
    "cif_fn",
    "cif_ref",
    "cif_cumsum",
    "CifOutput",
    "cif_stream",
    "cif_stream_fn",
    "cif_stream_ref",
    "CifStreamOutput",
    "Stream",
    "StreamError",
    "fsmn_memory",
    "fsmn_memory_fn",
    "fsmn_memory_ref",
    "out_proj_argmax",
    "out_proj_argmax_fn",
    "out_proj_argmax_ref",
    "hotword_decode",
    "hotword_decode_fn",
    "hotword_decode_ref",
]
