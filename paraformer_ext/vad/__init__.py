"""FunASR's fsmn-vad in paraformer_ext's own code (spec fsmn_vad.md): segments for long audio.

    from paraformer_ext.vad import FsmnVad
    vad = FsmnVad.load()                       # FunASR's weights, shipped in the package
    vad.segments("long.wav")                   # [[start_ms, end_ms], ...], FunASR's default (dynamic) mode
    vad.segments("long.wav", max_end_silence_time=800)   # FunASR's fixed mode

Model: fsmn-vad (ModelScope iic/speech_fsmn_vad_zh-cn-16k-common-pytorch) by Alibaba Group / FunASR,
FunASR Model Open Source License (vad/fsmn-vad/NOTICE.txt).
"""
from .postprocess import VadOptions, VadPostprocessor, segments_from_posteriors
from .weights import VadWeightsError, bundled_model_dir, resolve_model_dir, validate_model_dir

__all__ = [
    "FsmnVad",
    "VadStream",
    "FsmnVadEncoder",
    "VadOptions",
    "VadPostprocessor",
    "segments_from_posteriors",
    "bundled_model_dir",
    "resolve_model_dir",
    "validate_model_dir",
    "VadWeightsError",
]


def __getattr__(name):
    # The model needs the frontend (and soundfile); keep `import paraformer_ext.vad` light for the
    # post-processing and the weights alone.
    if name in ("FsmnVad", "VadStream"):
        from . import model

        return getattr(model, name)
    if name == "FsmnVadEncoder":
        from .network import FsmnVadEncoder

        return FsmnVadEncoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
