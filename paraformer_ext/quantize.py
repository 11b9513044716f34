"""int8 Paraformer: int8 weights with per-output-channel scales, activations quantized per token on the fly
(W8A8), an integer GEMM and one epilogue pass (ops/int8.py).

* Which layers: every nn.Linear of the encoder and the decoder (QKV / output projections of the SAN-M
  attention, cross-attention, both FFN GEMMs). Not quantized, on purpose:
  - the decoder's output layer (d → vocab) unless `output_layer=True`, as FunASR's own int8 export does: its
    logits decide every token, and with the fused projection + argmax (ops/out_proj.py) it is a small share
    of the time;
  - the predictor (a Conv1d and a d → 1 Linear): it decides where tokens fire and stays float32, as in
    FunASR (autocast off); it is 0.1 % of the weights;
  - LayerNorms, the FSMN depthwise convolutions and biases (tiny, and precision-critical).
* The GEMM is `torch._int_mm` (int8 × int8 → int32): on CPU oneDNN's VNNI kernels (3-4x the float32 GEMM
  on the CI machine), on CUDA cuBLASLt's int8 tensor-core GEMM. Both are well-kept, tuned libraries reached
  through torch; our kernels do what surrounds them (per-token quantization, dequantize + bias + ReLU +
  residual in one pass: csrc/int8_*.cpp/.cu).
* Saved models: `save_quantized` writes the int8 state_dict with the stat of the model.pt it came from;
  `paraformer_ext.load(dir, quantize="int8")` uses that file when it matches (no requantizing at every
  start) and writes it on first use.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ._ext import use_kernels
from .ops.int8 import (
    LAYER_NORM_EPS,
    int8_gemm,
    int8_linear,
    int8_linear_epilogue_quantize,
    int8_linear_from_quantized,
    int8_linear_split,
    layer_norm_quantize_rows,
    quantize_rows,
    quantize_weight_ref,
)

FORMAT = "paraformer_ext-int8-v1"
INT8_FILE = "model_int8.pt"


def _ln(norm: nn.Module | None):
    return None if norm is None else (norm.weight, norm.bias, getattr(norm, "eps", LAYER_NORM_EPS))


class Int8Linear(nn.Module):
    """y = act(norm(x) @ dequant(W).T + b) + residual with W int8 (N, K) and per-row scales (N,) float32.

    Implements the Linear-like protocol of ops/linear.py: forward(x, residual=None, relu=False, norm=None); a
    LayerNorm `norm` is fused into the quantization of x (`fuses_norm`). x: (..., K) in any float dtype; the
    output has x's dtype. Inference only (no gradients)."""

    fuses_norm = True

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bias_dtype=torch.float32, device=None,
                 split_activations: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.split_activations = split_activations  # two int8 parts per activation (ops/int8.py int8_linear_split)
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.zeros(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device) if bias else None)
        self.kernels = False

    @classmethod
    def from_linear(cls, lin: nn.Linear, split_activations: bool = False) -> "Int8Linear":
        q = cls(lin.in_features, lin.out_features, lin.bias is not None, lin.weight.dtype, lin.weight.device,
                split_activations)
        wq, scale = quantize_weight_ref(lin.weight.detach().float())
        q.weight.copy_(wq)
        q.weight_scale.copy_(scale)
        if lin.bias is not None:
            q.bias.copy_(lin.bias.detach())
        return q

    def _apply(self, fn, recurse=True):
        # A dtype cast of the model (model.half()) must not round the scales: they stay float32 and only
        # follow the device.
        scale = self.weight_scale
        super()._apply(fn, recurse)
        moved = self.weight_scale
        if moved.dtype != torch.float32:  # a dtype cast: keep the float32 original, on the new device
            self._buffers["weight_scale"] = moved.float() if scale.is_meta else scale.to(moved.device)
        return self

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight.float() * self.weight_scale[:, None]

    @property
    def chains_int8(self) -> bool:
        """Whether `chain` can hand this layer's output to the next int8 layer still quantized."""
        return not self.split_activations

    def _kernels(self, x: torch.Tensor) -> bool:
        return use_kernels(self.kernels, x.device)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, relu: bool = False,
                norm: nn.Module | None = None) -> torch.Tensor:
        k = self._kernels(x)
        w, ws, b = self.weight, self.weight_scale, self.bias
        if self.split_activations:
            return int8_linear_split(x, w, ws, b, residual, relu, x.dtype, ln=_ln(norm), kernels=k)
        if norm is None:
            return int8_linear(x, w, ws, b, residual, relu, x.dtype, kernels=k)
        K, N = x.shape[-1], self.out_features
        q, s = layer_norm_quantize_rows(x.reshape(-1, K), *_ln(norm), kernels=k)
        res = None if residual is None else residual.reshape(-1, N)
        return int8_linear_from_quantized(q, s, w, ws, b, res, relu, x.dtype, kernels=k).reshape(*x.shape[:-1], N)

    def chain(self, second: "Int8Linear", x: torch.Tensor, residual: torch.Tensor | None = None,
              norm: nn.Module | None = None, mid_norm: nn.Module | None = None) -> torch.Tensor:
        """second(mid_norm(relu(self(norm(x))))) + residual, the FFN of encoder and decoder, with the hidden
        layer passed from one integer GEMM to the next as int8: this layer's epilogue quantizes its own output
        (after the ReLU and mid_norm), so the (M, d_ff) float tensor is never written."""
        k = self._kernels(x)
        K = x.shape[-1]
        x2 = x.reshape(-1, K)
        q, s = layer_norm_quantize_rows(x2, *_ln(norm), kernels=k) if norm is not None else quantize_rows(x2, kernels=k)
        mid = _ln(mid_norm) or (None, None, LAYER_NORM_EPS)
        q, s = int8_linear_epilogue_quantize(int8_gemm(q, self.weight, kernels=k), s, self.weight_scale, self.bias,
                                             True, *mid, kernels=k)
        N = second.out_features
        res = None if residual is None else residual.reshape(-1, N)
        y = int8_linear_from_quantized(q, s, second.weight, second.weight_scale, second.bias, res, False, x.dtype,
                                       kernels=k)
        return y.reshape(*x.shape[:-1], N)

    def extra_repr(self) -> str:
        split = ", split activations" if self.split_activations else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8{split}"


def _targets(model: nn.Module, output_layer: bool) -> list[tuple[str, nn.Module, str, nn.Linear]]:
    """(full name, parent, attribute, Linear) of every Linear to quantize."""
    found = []
    for root_name in ("encoder", "decoder"):
        root = getattr(model, root_name)
        for parent_name, parent in root.named_modules():
            for name, child in parent.named_children():
                if type(child) is not nn.Linear:
                    continue
                if root_name == "decoder" and parent is root and name == "output_layer" and not output_layer:
                    continue
                found.append((".".join(p for p in (root_name, parent_name, name) if p), parent, name, child))
    return found


def quantize(model: nn.Module, output_layer: bool = False, split=None) -> nn.Module:
    """Replace the Linear layers of a Paraformer's encoder and decoder by Int8Linear, in place, and return it.
    (A loaded recognizer: `asr.quantize(...)`.) output_layer: also the decoder's d → vocab projection (off by
    default, as FunASR does).

    split(name) -> bool, optional: layers that carry their activations in two int8 parts (about 15 bits, one
    more integer GEMM each; ops/int8.py int8_linear_split). Off by default: per layer it brings the error down
    to that of the int8 weights alone (1.05e-2 → 7.4e-3 relative, benchmarks/int8_report.py), but on the encoder's
    QKV projections, where 8-bit activations hurt most in the first measurements, it did not raise the token
    agreement with float32 over 521 positions of real speech (83.5% with, 85.6% without), so it is not worth
    its cost by default."""
    if getattr(model, "quantization", None):
        raise ValueError(f"model is already quantized ({model.quantization})")
    split_names = []
    for full, parent, name, lin in _targets(model, output_layer):
        q = Int8Linear.from_linear(lin, split_activations=bool(split is not None and split(full)))
        q.kernels = getattr(model, "kernels", False)
        setattr(parent, name, q)
        if q.split_activations:
            split_names.append(full)
    model.quantization = {"format": FORMAT, "output_layer": bool(output_layer), "split_activations": split_names}
    return model


def prepare_int8_shells(model: nn.Module, quantization: dict) -> nn.Module:
    """The quantized model's structure with empty int8 layers, for loading a saved int8 state_dict."""
    split = set(quantization.get("split_activations", []))
    for full, parent, name, lin in _targets(model, quantization["output_layer"]):
        setattr(parent, name, Int8Linear(lin.in_features, lin.out_features, lin.bias is not None, lin.weight.dtype,
                                         lin.weight.device, split_activations=full in split))
    model.quantization = dict(quantization)
    return model


# --- saving and loading ------------------------------------------------------------------------------------


def source_stamp(weights: Path) -> dict:
    """What identifies the float checkpoint a saved int8 model came from (cheap: no hashing of 1 GB)."""
    st = os.stat(weights)
    return {"name": Path(weights).name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def save_quantized(model: nn.Module, path: str | os.PathLike, source: Path | None = None) -> Path:
    """Write the int8 model's state_dict (+ the stamp of the model.pt it was quantized from, `source`) to
    `path`. (A loaded recognizer: `asr.save_quantized(path)`.)"""
    if not getattr(model, "quantization", None):
        raise ValueError("save_quantized: the model is not quantized; call quantize(model) (or asr.quantize()) first")
    payload = {
        "format": FORMAT,
        "quantization": model.quantization,
        "source": source_stamp(source) if source is not None else None,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # never leave a half-written file where a later load would find it
    return path


def read_quantized(path: Path) -> dict:
    from .checkpoint import ModelLoadError

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"{path}: cannot be read as a paraformer_ext int8 model ({type(e).__name__}: {e})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelLoadError(f"{path}: not a {FORMAT} file (found format {payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r}); "
                             "delete it to requantize")
    return payload


def default_int8_path(weights: Path) -> Path:
    """model_int8.pt beside model.pt when that folder is writable, else a per-path file in the user cache."""
    folder = Path(weights).parent
    if os.access(folder, os.W_OK):
        return folder / INT8_FILE
    import hashlib

    from .paths import cache_dir

    cache = cache_dir() / "int8"
    cache.mkdir(parents=True, exist_ok=True)
    return cache / (hashlib.sha256(str(Path(weights).resolve()).encode()).hexdigest()[:16] + ".pt")


def matching_saved(path: Path, weights: Path, output_layer: bool) -> dict | None:
    """The saved int8 payload at `path` if it was made from exactly this model.pt with these settings."""
    if not path.is_file():
        return None
    payload = read_quantized(path)
    if payload.get("source") != source_stamp(weights) or payload["quantization"].get("output_layer") != output_layer:
        warnings.warn(f"{path} was quantized from another model.pt or with other settings; requantizing", stacklevel=3)
        return None
    return payload


def load_int8(cfg, weights: Path, output_layer: bool = False, quantized_path=None) -> nn.Module:
    """The int8 Paraformer of config `cfg` and float checkpoint `weights`: from a saved int8 file made from this
    model.pt (the float model is never built: its skeleton is laid out on the meta device), else quantized now
    from model.pt and saved (beside it, or at quantized_path) for the next load."""
    from .checkpoint import load_state_dict_strict, read_state_dict
    from .model.paraformer import Paraformer

    path = Path(quantized_path) if quantized_path is not None else default_int8_path(weights)
    payload = matching_saved(path, weights, output_layer)
    if payload is not None:
        with torch.device("meta"):
            model = prepare_int8_shells(Paraformer(cfg), payload["quantization"])
        load_state_dict_strict(model, payload["state_dict"], str(path), assign=True)
        return model
    model = Paraformer(cfg)
    load_state_dict_strict(model, read_state_dict(weights), str(weights))
    quantize(model, output_layer)  # in float32, before any cast: exact scales, dtype-independent file
    try:
        save_quantized(model, path, source=weights)
    except OSError as e:
        warnings.warn(f"could not save the int8 model to {path} ({e}); it will be requantized at the next load",
                      stacklevel=3)
    return model
