"""Model geometry read from FunASR's config.yaml (spec paraformer.md §6): nothing is hard-coded.

Two models are supported: the offline Paraformer (model: Paraformer, SANMEncoder, CifPredictorV2,
ParaformerSANMDecoder, WavFrontend) and its streaming twin (model: ParaformerStreaming, SANMEncoderChunkOpt with
input_layer pe_online, the same predictor and decoder, frontend WavFrontend or WavFrontendOnline; spec §6, the
paraformer-zh-streaming layout). Both have the same state_dict keys. Every other class gets an error that says
what was found.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

# FunASR's LayerNorm (funasr.models.transformer.layer_norm.LayerNorm): fixed by the architecture, not in
# config.yaml. Here, in a module that imports nothing of the package, so that ops/ can default to it too.
LAYER_NORM_EPS = 1e-12

SUPPORTED = ("model Paraformer with encoder SANMEncoder, predictor CifPredictorV2, decoder ParaformerSANMDecoder, "
             "frontend WavFrontend; or model ParaformerStreaming with encoder SANMEncoderChunkOpt (the same predictor "
             "and decoder, frontend WavFrontend or WavFrontendOnline)")

# Classes FunASR registers for neighbouring models, with what they are, for a precise error message.
KNOWN_UNSUPPORTED = {
    "SeacoParaformer": "SeACo-Paraformer (hotword biasing; CifPredictorV3 + seaco decoder)",
    "BiCifParaformer": "BiCif-Paraformer (timestamp model with CifPredictorV3)",
    "ParaformerOnline": "streaming Paraformer (chunked encoder)",
    "ContextualParaformer": "contextual Paraformer (hotword bias encoder)",
    "NeatContextualParaformer": "contextual Paraformer (hotword bias encoder)",
    "CifPredictorV3": "the upsampling CIF predictor of BiCif/SeACo models",
    "ParaformerSANDecoder": "the non-SAN-M Paraformer decoder (AISHELL conformer recipe)",
    "ConformerEncoder": "a Conformer encoder (AISHELL recipe)",
}


class UnsupportedModelError(ValueError):
    """The model directory holds a model class paraformer_ext does not implement."""


def _unsupported(role: str, found: Any) -> UnsupportedModelError:
    what = KNOWN_UNSUPPORTED.get(str(found))
    detail = f" ({what})" if what else ""
    return UnsupportedModelError(f"config.yaml: {role} is {found!r}{detail}, which paraformer_ext does not support; supported: {SUPPORTED}")


def _take(cls, conf: dict | None, role: str, ignore: tuple[str, ...] = ()):
    """Build a dataclass from a *_conf dict; unknown keys are an error (they would change the model)."""
    conf = dict(conf or {})
    names = {f.name for f in fields(cls)}
    unknown = sorted(k for k in conf if k not in names and k not in ignore)
    if unknown:
        raise ValueError(f"config.yaml: {role} has keys paraformer_ext does not know: {unknown}")
    return cls(**{k: v for k, v in conf.items() if k in names})


@dataclass
class EncoderConfig:
    """SANMEncoder (spec §4.3). input_size is the frontend's output size (n_mels * lfr_m)."""

    output_size: int = 256
    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 6
    dropout_rate: float = 0.1
    positional_dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.0
    input_layer: str = "conv2d"
    pos_enc_class: str = "SinusoidalPositionEncoder"
    normalize_before: bool = True
    concat_after: bool = False
    positionwise_layer_type: str = "linear"
    positionwise_conv_kernel_size: int = 1
    padding_idx: int = -1
    interctc_layer_idx: list = field(default_factory=list)
    interctc_use_conditioning: bool = False
    kernel_size: int = 11
    sanm_shfit: int = 0
    lora_list: Any = None
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    selfattention_layer_type: str = "sanm"
    tf2torch_tensor_name_prefix_torch: str = "encoder"
    tf2torch_tensor_name_prefix_tf: str = "seq2seq/encoder"
    input_size: int = 560
    # SANMEncoderChunkOpt only (the streaming encoder): its training-time overlap_chunk geometry. Streaming
    # inference takes its chunk sizes from the caller instead (FunASR's cache chunk_size), so these are kept
    # for completeness, not used.
    chunk_size: Any = None
    stride: Any = None
    pad_left: Any = None
    encoder_att_look_back_factor: Any = None
    decoder_att_look_back_factor: Any = None
    streaming: bool = False  # set by ParaformerConfig: SANMEncoderChunkOpt

    _CHUNK_KEYS = ("chunk_size", "stride", "pad_left", "encoder_att_look_back_factor", "decoder_att_look_back_factor")

    def validate(self) -> None:
        if not self.streaming:
            extra = [k for k in self._CHUNK_KEYS if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"config.yaml: encoder_conf has {extra}, which only SANMEncoderChunkOpt (streaming) takes")
        checks = {
            "input_layer": (self.input_layer, "pe_online" if self.streaming else "pe"),
            "pos_enc_class": (self.pos_enc_class, "SinusoidalPositionEncoder"),
            "normalize_before": (self.normalize_before, True),
            "concat_after": (self.concat_after, False),
            "selfattention_layer_type": (self.selfattention_layer_type, "sanm"),
            "positionwise_layer_type": (self.positionwise_layer_type, "linear"),
        }
        for k, (got, want) in checks.items():
            if got != want:
                raise UnsupportedModelError(f"config.yaml: encoder_conf.{k} = {got!r}; paraformer_ext supports only {want!r}")
        if self.lora_list:
            raise UnsupportedModelError("config.yaml: encoder_conf.lora_list is set; LoRA attention is not supported")
        if self.output_size % self.attention_heads:
            raise ValueError(f"encoder output_size {self.output_size} is not divisible by attention_heads {self.attention_heads}")
        if self.num_blocks < 1:
            raise ValueError("encoder num_blocks must be >= 1")


@dataclass
class DecoderConfig:
    """ParaformerSANMDecoder (spec §4.4)."""

    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 6
    dropout_rate: float = 0.1
    positional_dropout_rate: float = 0.1
    self_attention_dropout_rate: float = 0.0
    src_attention_dropout_rate: float = 0.0
    input_layer: str = "embed"
    use_output_layer: bool = True
    wo_input_layer: bool = False
    pos_enc_class: str = "PositionalEncoding"
    normalize_before: bool = True
    concat_after: bool = False
    att_layer_num: int = 6
    kernel_size: int = 21
    sanm_shfit: int = 0
    lora_list: Any = None
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    chunk_multiply_factor: tuple = (1,)
    tf2torch_tensor_name_prefix_torch: str = "decoder"
    tf2torch_tensor_name_prefix_tf: str = "seq2seq/decoder"
    embed_tensor_name_prefix_tf: Any = None

    def validate(self) -> None:
        if self.wo_input_layer:
            raise UnsupportedModelError("config.yaml: decoder_conf.wo_input_layer is true; not supported")
        if self.input_layer != "embed" or not self.use_output_layer or not self.normalize_before or self.concat_after:
            raise UnsupportedModelError(
                "config.yaml: decoder_conf must have input_layer 'embed', use_output_layer true, normalize_before true, "
                f"concat_after false; got {self.input_layer!r}, {self.use_output_layer}, {self.normalize_before}, {self.concat_after}"
            )
        if self.lora_list:
            raise UnsupportedModelError("config.yaml: decoder_conf.lora_list is set; LoRA attention is not supported")
        if not 0 <= self.att_layer_num <= self.num_blocks:
            raise ValueError(f"decoder att_layer_num {self.att_layer_num} must be in [0, num_blocks={self.num_blocks}]")
        if self.sanm_shfit is None:  # FunASR: None means (K-1)//2
            self.sanm_shfit = (self.kernel_size - 1) // 2


@dataclass
class PredictorConfig:
    """CifPredictorV2 (spec §3.1)."""

    idim: int = 512
    l_order: int = 1
    r_order: int = 1
    threshold: float = 1.0
    dropout: float = 0.1
    smooth_factor: float = 1.0
    noise_threshold: float = 0.0
    tail_threshold: float = 0.0
    tf2torch_tensor_name_prefix_torch: str = "predictor"
    tf2torch_tensor_name_prefix_tf: str = "seq2seq/cif"
    tail_mask: bool = True


@dataclass
class ModelConfig:
    """Paraformer's model_conf (spec §1.1)."""

    ctc_weight: float = 0.5
    interctc_weight: float = 0.0
    input_size: int = 80
    vocab_size: int = -1
    ignore_id: int = -1
    blank_id: int = 0
    sos: int = 1
    eos: int = 2
    lsm_weight: float = 0.0
    length_normalized_loss: bool = False
    predictor_weight: float = 0.0
    predictor_bias: int = 0
    sampling_ratio: float = 0.2
    share_embedding: bool = False
    # ParaformerStreaming only: "chunk" = the decoder's cross-attention sees its token's encoder chunk and the
    # look-back (training/streaming.py); anything else = the whole utterance (FunASR's remove_chunk branch)
    decoder_attention_chunk_type: str = "chunk"
    use_1st_decoder_loss: bool = False
    report_cer: bool = True
    report_wer: bool = True
    sym_space: str = "<space>"
    sym_blank: str = "<blank>"
    extract_feats_in_collect_stats: bool = True
    reduce: bool = True


@dataclass
class ParaformerConfig:
    encoder: EncoderConfig
    decoder: DecoderConfig
    predictor: PredictorConfig
    model: ModelConfig
    frontend_conf: dict
    vocab_size: int
    # training-only data augmentation (spec §5.6), read but not validated here: inference must load whatever
    # augmentation a model was trained with; training/specaug.py refuses what it does not implement
    specaug: str | None = None
    specaug_conf: dict = field(default_factory=dict)
    # ParaformerStreaming (SANMEncoderChunkOpt): decoded chunk by chunk (streaming.py), never offline
    streaming: bool = False
    # "WavFrontend" (features of each chunk computed alone, as FunASR's offline frontend does when a streaming
    # model is configured with it) or "WavFrontendOnline" (samples and frames carried between chunks)
    frontend_class: str = "WavFrontend"

    @property
    def d_model(self) -> int:
        return self.encoder.output_size

    @classmethod
    def from_yaml_dict(cls, cfg: dict, vocab_size: int, input_size: int) -> "ParaformerConfig":
        """Parse config.yaml (already loaded). vocab_size from the token list, input_size from the frontend."""
        if not isinstance(cfg, dict):
            raise ValueError(f"config.yaml must be a mapping, got {type(cfg).__name__}")
        streaming = cfg.get("model") == "ParaformerStreaming"
        expect = {
            "model": ("ParaformerStreaming",) if streaming else ("Paraformer",),
            "encoder": ("SANMEncoderChunkOpt",) if streaming else ("SANMEncoder",),
            "predictor": ("CifPredictorV2",),
            "decoder": ("ParaformerSANMDecoder",),
            "frontend": ("WavFrontend", "WavFrontendOnline") if streaming else ("WavFrontend",),
        }
        for role, want in expect.items():
            got = cfg.get(role)
            if got is None:
                raise ValueError(f"config.yaml has no '{role}' entry; expected {' or '.join(map(repr, want))}")
            if got not in want:
                if role == "encoder" and got in ("SANMEncoder", "SANMEncoderChunkOpt"):
                    raise UnsupportedModelError(
                        f"config.yaml: model {cfg.get('model')!r} with encoder {got!r}; paraformer_ext supports "
                        "Paraformer + SANMEncoder and ParaformerStreaming + SANMEncoderChunkOpt")
                raise _unsupported(role, got)
        enc = _take(EncoderConfig, cfg.get("encoder_conf"), "encoder_conf")
        enc.streaming = streaming
        enc.input_size = input_size
        enc.validate()
        dec = _take(DecoderConfig, cfg.get("decoder_conf"), "decoder_conf")
        dec.validate()
        pred = _take(PredictorConfig, cfg.get("predictor_conf"), "predictor_conf")
        if pred.idim != enc.output_size:
            raise ValueError(f"predictor idim {pred.idim} differs from encoder output_size {enc.output_size}")
        # Paraformer(**model_conf) takes **kwargs in FunASR, so unknown model_conf keys are legal there too.
        mc_conf = dict(cfg.get("model_conf") or {})
        mc = _take(ModelConfig, mc_conf, "model_conf", ignore=tuple(mc_conf))
        if mc.ctc_weight >= 1.0:
            raise UnsupportedModelError("model_conf.ctc_weight = 1.0 drops the decoder (CTC-only model); not supported")
        if cfg.get("normalize") not in (None, "null"):
            raise UnsupportedModelError(f"config.yaml: normalize = {cfg.get('normalize')!r}; only null is supported (CMVN is in the frontend)")
        specaug = cfg.get("specaug")
        return cls(enc, dec, pred, mc, dict(cfg.get("frontend_conf") or {}), vocab_size,
                   None if specaug in (None, "null") else str(specaug), dict(cfg.get("specaug_conf") or {}),
                   streaming, str(cfg["frontend"]))
