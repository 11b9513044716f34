"""FunASR model directories (spec paraformer.md §7): config.yaml, model.pt, am.mvn, tokens.json|tokens.txt,
optionally configuration.json. Loading is strict: FunASR silently skips missing keys and shape mismatches
(leaving random weights behind); paraformer_ext refuses them and names the keys.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from .model.config import ParaformerConfig

LAYOUT = "a FunASR model directory holds config.yaml, model.pt, am.mvn and tokens.json (or tokens.txt), optionally configuration.json"


class ModelLoadError(ValueError):
    """The model directory is incomplete, malformed, or does not match its config."""


@dataclass
class ModelFiles:
    root: Path
    config: dict
    config_path: Path
    weights: Path
    cmvn: Path | None
    tokens: Path | list  # a file, or the token list inlined in config.yaml


def _read_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ModelLoadError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a YAML mapping (FunASR config), got {type(data).__name__}")
    return data


def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{path}: not valid JSON: {e}") from e


def resolve_model_dir(model_dir: str | Path) -> ModelFiles:
    """Find the files the way FunASR's downloader does: configuration.json's file_path_metas when present,
    else the conventional names (tokens.json wins over tokens.txt)."""
    root = Path(model_dir).expanduser()
    if not root.is_dir():
        raise ModelLoadError(f"model directory {root} does not exist or is not a directory ({LAYOUT})")
    metas: dict = {}
    if (root / "configuration.json").is_file():
        conf = _read_json(root / "configuration.json")
        metas = conf.get("file_path_metas", {}) if isinstance(conf, dict) else {}
        if not isinstance(metas, dict):
            raise ModelLoadError(f"{root / 'configuration.json'}: file_path_metas must be a mapping")

    def pick(meta_value, *defaults) -> Path | None:
        names = ([meta_value] if isinstance(meta_value, str) else []) + list(defaults)
        for n in names:
            if (root / n).is_file():
                return root / n
        return None

    config_path = pick(metas.get("config"), "config.yaml")
    if config_path is None:
        raise ModelLoadError(f"{root} has no config.yaml ({LAYOUT})")
    config = _read_yaml(config_path)
    weights = pick(metas.get("init_param"), "model.pt")
    if weights is None:
        raise ModelLoadError(f"{root} has no model.pt ({LAYOUT})")

    tok_conf = config.get("tokenizer_conf") or {}
    inline = tok_conf.get("token_list") if isinstance(tok_conf, dict) else None
    tokens: Path | list | None = pick((metas.get("tokenizer_conf") or {}).get("token_list"), "tokens.json", "tokens.txt")
    if tokens is None and isinstance(inline, list):
        tokens = inline
    if tokens is None and isinstance(inline, str) and (root / Path(inline).name).is_file():
        tokens = root / Path(inline).name
    if tokens is None:
        raise ModelLoadError(f"{root} has no tokens.json or tokens.txt ({LAYOUT})")

    cmvn = pick((metas.get("frontend_conf") or {}).get("cmvn_file"), "am.mvn")
    frontend_conf = config.get("frontend_conf") or {}
    if cmvn is None and frontend_conf.get("cmvn_file"):
        cand = root / Path(str(frontend_conf["cmvn_file"])).name
        cmvn = cand if cand.is_file() else None
    if cmvn is None:
        raise ModelLoadError(f"{root} has no am.mvn (global CMVN of the features; {LAYOUT})")
    return ModelFiles(root, config, config_path, weights, cmvn, tokens)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """torch.load (weights only), unwrapping 'state_dict' / 'model_state_dict' / 'model' and 'module.'."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a malformed file for the user
        raise ModelLoadError(f"{path}: cannot be read as a torch state_dict ({type(e).__name__}: {e})") from e
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict):
        raise ModelLoadError(f"{path}: expected a dict of tensors, got {type(sd).__name__}")
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise ModelLoadError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def _list(keys: list[str], limit: int = 12) -> str:
    head = ", ".join(keys[:limit])
    return head + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_state_dict_strict(module: torch.nn.Module, sd: dict[str, torch.Tensor], source: str, prefix: str = "",
                           assign: bool = False) -> None:
    """Copy `sd` into `module`; any missing key, unexpected key or shape mismatch is a ModelLoadError naming
    them (except a missing `decoder.embed`, see `fill_training_embed`). `source` names the file in the
    message; `prefix` is what sd's keys carry before the module's own (FunASR's VAD checkpoint: "encoder.").
    assign: the module takes sd's tensors themselves instead of copies (for a module laid out on the meta
    device: the weights are in memory once, not twice); a tensor whose dtype differs from the module's is cast,
    as the copy would."""
    sd = fill_training_embed(module, sd, source)
    own = {prefix + k: t for k, t in module.state_dict().items()}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = [f"{source} does not match the model its config.yaml describes:"]
        if missing:
            parts.append(f"  missing keys ({len(missing)}): {_list(missing)}")
        if unexpected:
            parts.append(f"  unexpected keys ({len(unexpected)}): {_list(unexpected)}")
        if mismatched:
            parts.append(f"  shape mismatches ({len(mismatched)}): {_list(mismatched, 6)}")
        parts.append("  (FunASR would load this silently and leave those weights random; check that the files belong together)")
        raise ModelLoadError("\n".join(parts))
    if assign:
        module.load_state_dict({k[len(prefix):]: sd[k].to(t.dtype) for k, t in own.items()}, strict=True, assign=True)
        return
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(sd[k])


TRAINING_EMBED = "decoder.embed.0.weight"


def fill_training_embed(module: torch.nn.Module, sd: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """`sd`, completed with `decoder.embed.0.weight` when an inference-only export left it out.

    Only training's GLM sampler reads decoder.embed (spec training.md §7), so such exports are valid models.
    The embedding is tie-initialised as a copy of decoder.output_layer.weight when the shapes match (both are
    (vocab, d) rows per token), else the module's own random initialisation is kept. Which of the two is
    recorded on the module as `filled_training_embed` (a sentence), for the trainer to say when it trains
    from such a model; inference, which never reads decoder.embed, loads it silently.
    """
    own = module.state_dict()
    if TRAINING_EMBED not in own or TRAINING_EMBED in sd or any(k.startswith("decoder.embed.") for k in sd):
        return sd  # nothing missing, or something odd that the strict check will name
    shape = own[TRAINING_EMBED].shape
    out = sd.get("decoder.output_layer.weight")
    sd = dict(sd)
    if out is not None and out.shape == shape:
        sd[TRAINING_EMBED] = out.detach().clone()
        how = "initialised as a copy of decoder.output_layer.weight (tied initialisation)"
    else:
        mine = own[TRAINING_EMBED]
        # a module on the meta device has no values: nn.Embedding's own initialisation, N(0, 1)
        sd[TRAINING_EMBED] = torch.empty(shape, dtype=mine.dtype).normal_() if mine.is_meta else mine.detach().clone()
        got = "missing" if out is None else f"{tuple(out.shape)}"
        how = f"initialised at random (decoder.output_layer.weight is {got}, not {tuple(shape)})"
    module.filled_training_embed = (f"{source} has no {TRAINING_EMBED} (an inference-only export): decoder.embed, "
                                     f"which only training's GLM sampler uses, is {how}")
    return sd


def build_config(files: ModelFiles, vocab_size: int, input_size: int) -> ParaformerConfig:
    try:
        return ParaformerConfig.from_yaml_dict(files.config, vocab_size, input_size)
    except ModelLoadError:
        raise
    except ValueError as e:
        # UnsupportedModelError is a ValueError too: keep its type, add where it came from
        raise type(e)(f"{files.config_path}: {e}") from e
