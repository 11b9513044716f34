"""Training from scratch as fine-tuning of a freshly built directory: an architecture (config.yaml) and a token
list become a FunASR model directory with PyTorch's default initialisation and a global CMVN (am.mvn) measured
on the training audio; the trainer then starts from it like from any --init."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml

from ..audio import AudioError, load_audio
from ..frontend import FrontendConfig, WavFrontend
from ..model.config import ParaformerConfig
from ..model.paraformer import Paraformer
from ..synthetic import _write_mvn
from ..text import TokenList
from .data import Utterance


def build_initial_dir(config_path, tokens_path, utts: list[Utterance], out, seed: int = 0, max_utts: int = 500) -> Path:
    """Write out/{config.yaml, tokens.json, am.mvn, model.pt}. CMVN: mean and standard deviation of the fbank
    features of (at most max_utts of) `utts`, tiled over the LFR stack as FunASR's am.mvn is."""
    out = Path(out)
    with open(config_path, encoding="utf-8") as f:
        cfg_yaml = yaml.safe_load(f)
    if not isinstance(cfg_yaml, dict):
        raise ValueError(f"{config_path}: expected a FunASR config.yaml (a mapping), got {type(cfg_yaml).__name__}")
    tokens = TokenList.load(tokens_path)
    fconf = dict(cfg_yaml.get("frontend_conf") or {})
    fcfg = FrontendConfig.from_dict(fconf)
    plain = WavFrontend(FrontendConfig.from_dict({**fconf, "lfr_m": 1, "lfr_n": 1}), None)
    feats = []
    with torch.no_grad():
        for u in utts[:max_utts]:
            try:
                w = load_audio(u.path, target_sr=fcfg.fs)
            except AudioError:
                continue  # the trainer names unreadable audio when it meets it
            feats.append(plain(w[None])[0][0])
    if not feats:
        raise ValueError("no readable training audio to measure the CMVN (am.mvn) on")
    fb = torch.cat(feats).double()
    mean, std = fb.mean(0).numpy(), fb.std(0).clamp_min(1e-3).numpy()
    cfg = ParaformerConfig.from_yaml_dict(cfg_yaml, len(tokens), fcfg.n_mels * fcfg.lfr_m)
    torch.manual_seed(seed)
    model = Paraformer(cfg)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _write_mvn(tmp / "am.mvn", np.tile(-mean, fcfg.lfr_m), np.tile(1.0 / std, fcfg.lfr_m))
    torch.save(model.state_dict(), tmp / "model.pt")
    shutil.copyfile(config_path, tmp / "config.yaml")
    with open(tmp / "tokens.json", "w", encoding="utf-8") as f:
        json.dump(list(tokens), f, ensure_ascii=False, indent=0)
    tmp.rename(out)  # complete or absent: a resumed run reuses it (its CMVN must not change)
    return out
