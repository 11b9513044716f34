"""Self-contained material for demos, tests and benchmarks when no real model or audio is at hand:
a random-weight Paraformer directory in FunASR's layout, and speech-like synthetic audio.

The weights are random, so transcripts are meaningless; everything else (files, shapes, the whole
pipeline, kernels vs reference, speed) is real.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from .paths import cache_dir

PRESETS = {
    # the public paraformer-large geometry
    "large": dict(d_model=512, heads=4, units=2048, enc_blocks=50, dec_blocks=16, att_layers=16, kernel=11),
    # small and fast, with one FSMN-only decoders2 layer
    "small": dict(d_model=256, heads=4, units=1024, enc_blocks=6, dec_blocks=4, att_layers=3, kernel=11),
    # trained on the synthetic Mandarin corpus (training.md §6's configs B and C; 3004 tokens: 3.6 M / 6.4 M)
    "syn-b": dict(d_model=144, heads=4, units=576, enc_blocks=6, dec_blocks=4, att_layers=4, kernel=11),
    "syn-c": dict(d_model=192, heads=4, units=768, enc_blocks=8, dec_blocks=3, att_layers=3, kernel=11),
    # the trainer's tests: a few seconds a step on 2 CPU cores, most of its 1.2 M parameters in the vocabulary
    "tiny": dict(d_model=64, heads=2, units=128, enc_blocks=2, dec_blocks=2, att_layers=1, kernel=11),
}
VOCAB = 8404


def make_tokens() -> list[str]:
    """<blank> <s> </s>, 8000 CJK characters, 400 latin pieces (alternating plain / '@@'), <unk>."""
    toks = ["<blank>", "<s>", "</s>"] + [chr(0x4E00 + i) for i in range(8000)]
    letters = "abcdefghijklmnopqrstuvwxyz"
    i = 0
    while len(toks) < VOCAB - 1:
        w = letters[i % 26] + letters[(i // 26) % 26]
        toks.append(w + "@@" if i % 2 else w)
        i += 1
    return toks + ["<unk>"]


def make_config(preset: str) -> dict:
    p = PRESETS[preset]
    d = p["d_model"]
    return {
        "model": "Paraformer",
        "model_conf": {"ctc_weight": 0.0, "lsm_weight": 0.1, "length_normalized_loss": True, "predictor_weight": 1.0,
                       "predictor_bias": 1, "sampling_ratio": 0.75},
        "encoder": "SANMEncoder",
        "encoder_conf": {"output_size": d, "attention_heads": p["heads"], "linear_units": p["units"],
                         "num_blocks": p["enc_blocks"], "dropout_rate": 0.1, "positional_dropout_rate": 0.1,
                         "attention_dropout_rate": 0.1, "input_layer": "pe", "pos_enc_class": "SinusoidalPositionEncoder",
                         "normalize_before": True, "kernel_size": p["kernel"], "sanm_shfit": 0, "selfattention_layer_type": "sanm"},
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": {"attention_heads": p["heads"], "linear_units": p["units"], "num_blocks": p["dec_blocks"],
                         "dropout_rate": 0.1, "positional_dropout_rate": 0.1, "self_attention_dropout_rate": 0.1,
                         "src_attention_dropout_rate": 0.1, "att_layer_num": p["att_layers"], "kernel_size": p["kernel"], "sanm_shfit": 0},
        "predictor": "CifPredictorV2",
        "predictor_conf": {"idim": d, "threshold": 1.0, "l_order": 1, "r_order": 1, "tail_threshold": 0.45},
        "frontend": "WavFrontend",
        "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25, "frame_shift": 10,
                          "lfr_m": 7, "lfr_n": 6, "dither": 0.0},
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
        "normalize": None,
    }


def synthetic_speech(seconds: float, seed: int, sr: int = 16000) -> np.ndarray:
    """Speech-like audio: voiced syllables (harmonics of a gliding F0 through random formant resonances),
    noise bursts for consonants, and short pauses. float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    out = np.zeros(n, dtype=np.float64)
    t = 0
    while t < n:
        if rng.random() < 0.15:  # pause
            t += int(rng.uniform(0.08, 0.4) * sr)
            continue
        dur = int(rng.uniform(0.12, 0.3) * sr)
        m = min(dur, n - t)
        tt = np.arange(m) / sr
        f0 = rng.uniform(90, 240) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(1, 4) * tt))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        formants = rng.uniform([250, 800, 2000], [900, 2200, 3200])
        sig = np.zeros(m)
        for h in range(1, 30):
            fh = h * f0
            gain = sum(np.exp(-((fh - f) ** 2) / (2 * (80 + 0.05 * f) ** 2)) for f in formants) + 0.02
            sig += gain * np.sin(h * phase) * (fh < sr / 2)
        if rng.random() < 0.4:  # a fricative onset
            k = min(m, int(0.05 * sr))
            sig[:k] += rng.normal(0, 0.6, k) * np.linspace(1, 0, k)
        env = np.abs(np.sin(np.pi * np.arange(m) / max(m - 1, 1))) ** 0.6
        out[t : t + m] += sig * env * rng.uniform(0.3, 1.0)
        t += m
    out += rng.normal(0, 1e-3, n)  # a noise floor, so no frame is digital silence
    out *= 0.3 / max(np.abs(out).max(), 1e-9)
    return out.astype(np.float32)


def _init_weights(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            parent = name.split(".")[-2]
            if "norm" in parent:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + torch.empty_like(p).uniform_(-0.1, 0.1, generator=g))
            elif name == "decoder.embed.0.weight":
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[1:].numel() if p.dim() >= 2 else None
                if fan_in is None:  # a bias: bound from its weight's fan-in
                    w = dict(model.named_parameters())[name[: -len("bias")] + "weight"]
                    fan_in = w.shape[1:].numel()
                b = 1.0 / math.sqrt(fan_in)
                p.copy_(torch.empty_like(p).uniform_(-b, b, generator=g))


def _write_mvn(path: Path, shift: np.ndarray, scale: np.ndarray) -> None:
    fmt = lambda a: " ".join(f"{x:.6f}" for x in a)  # noqa: E731
    with open(path, "w") as f:
        f.write(f"<Nnet>\n<Splice> {len(shift)} {len(shift)}\n[ 0 ]\n")
        f.write(f"<AddShift> {len(shift)} {len(shift)}\n<LearnRateCoef> 0 [ {fmt(shift)} ]\n")
        f.write(f"<Rescale> {len(scale)} {len(scale)}\n<LearnRateCoef> 0 [ {fmt(scale)} ]\n</Nnet>\n")


def make_random_model(out_dir: str | Path, preset: str = "small", seed: int = 0, calibration_audio: list[np.ndarray] | None = None,
                      mean_alpha: float = 0.3) -> Path:
    """Write a random-weight Paraformer in FunASR's layout (config.yaml, model.pt, am.mvn, tokens.json,
    configuration.json). CMVN comes from `calibration_audio` (synthetic speech by default), and the CIF
    output bias is set by bisection so the mean alpha is `mean_alpha` (a few tokens per second, like a
    trained model)."""
    from .frontend import FrontendConfig, WavFrontend
    from .model.config import ParaformerConfig
    from .model.paraformer import Paraformer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg_yaml = make_config(preset)
    audio = calibration_audio or [synthetic_speech(6.0, seed + i) for i in range(3)]
    fcfg = FrontendConfig.from_dict(cfg_yaml["frontend_conf"])
    plain = WavFrontend(FrontendConfig.from_dict({**cfg_yaml["frontend_conf"], "lfr_m": 1, "lfr_n": 1}), None)
    with torch.no_grad():
        fb = torch.cat([plain(torch.from_numpy(a)[None])[0][0] for a in audio])
    mean, std = fb.mean(0).double().numpy(), fb.std(0).double().clamp_min(1e-3).numpy()
    _write_mvn(out / "am.mvn", np.tile(-mean, fcfg.lfr_m), np.tile(1.0 / std, fcfg.lfr_m))

    cfg = ParaformerConfig.from_yaml_dict(cfg_yaml, VOCAB, fcfg.n_mels * fcfg.lfr_m)
    model = Paraformer(cfg).eval()
    _init_weights(model, seed)
    # calibrate the CIF bias: encoder once, then bisection on the last affine layer's bias alone
    from .frontend import load_cmvn

    front = WavFrontend(fcfg, load_cmvn(out / "am.mvn"))
    with torch.no_grad():
        logits = []
        for a in audio:
            f, fl = front(torch.from_numpy(a)[None])
            enc = model.encoder(f, fl)
            pr = model.predictor
            x = torch.nn.functional.pad(enc.transpose(1, 2), (pr.cfg.l_order, pr.cfg.r_order))
            x = torch.relu(pr.cif_conv1d(x)).transpose(1, 2)
            logits.append((x @ pr.cif_output.weight.T).flatten())
        z = torch.cat(logits)
        lo, hi = -20.0, 20.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if torch.sigmoid(z + mid).mean() < mean_alpha else (lo, mid)
        model.predictor.cif_output.bias.fill_((lo + hi) / 2)
    torch.save(model.state_dict(), out / "model.pt")
    with open(out / "config.yaml", "w") as f:
        yaml.safe_dump(cfg_yaml, f, sort_keys=False, allow_unicode=True)
    with open(out / "tokens.json", "w", encoding="utf-8") as f:
        json.dump(make_tokens(), f, ensure_ascii=False, indent=0)
    with open(out / "configuration.json", "w") as f:
        json.dump({"framework": "pytorch", "task": "auto-speech-recognition",
                   "model_name_in_hub": {"ms": f"RANDOM-WEIGHTS paraformer_ext demo preset {preset} (not a trained model)"},
                   "file_path_metas": {"init_param": "model.pt", "config": "config.yaml",
                                       "tokenizer_conf": {"token_list": "tokens.json"}, "frontend_conf": {"cmvn_file": "am.mvn"}}}, f, indent=2)
    return out


# What distinguishes FunASR's paraformer-large-online from paraformer-large (spec §6; the streaming goldens'
# config_changes): the chunked encoder with look-back, and the decoder FSMN shifted to look back only.
ONLINE_CONFIG_CHANGES = {
    "model": "ParaformerStreaming", "encoder": "SANMEncoderChunkOpt",
    "encoder_conf": {"input_layer": "pe_online", "chunk_size": [12, 15], "stride": [8, 10], "pad_left": [0, 0],
                     "encoder_att_look_back_factor": [4, 4], "decoder_att_look_back_factor": [1, 1]},
    "decoder_conf": {"sanm_shfit": 5}}


def online_variant(src_dir: str | Path, out_dir: str | Path, changes: dict | None = None,
                   frontend: str | None = None) -> Path:
    """A copy of an offline model directory under a streaming config (the same weights): `changes` merged into
    config.yaml (default ONLINE_CONFIG_CHANGES; a dict value updates that section), `frontend` replacing the
    frontend class when given (e.g. "WavFrontendOnline")."""
    import shutil

    src, out = Path(src_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "config.yaml" and not f.name.startswith("."):
            shutil.copy(f, out / f.name)
    cfg = yaml.safe_load((src / "config.yaml").read_text(encoding="utf-8"))
    for key, value in (ONLINE_CONFIG_CHANGES if changes is None else changes).items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    if frontend:
        cfg["frontend"] = frontend
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return out


def run_demo(a) -> int:
    """`paraformer-ext demo`: build the random model and synthetic audio, transcribe with the compiled
    kernels and with the reference, and compare."""
    import soundfile as sf

    from ._ext import use_kernels as resolve_kernels
    from .recognizer import load

    work = Path(a.workdir) if a.workdir else cache_dir() / "demo"
    model_dir = work / f"model_{a.preset}"
    if not (model_dir / "model.pt").exists():
        print(f"building a random-weight '{a.preset}' Paraformer in {model_dir} ...", flush=True)
        make_random_model(model_dir, a.preset)
    wav_dir = work / "audio"
    wav_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    paths = []
    for i in range(a.utterances):
        p = wav_dir / f"utt_{i:03d}.wav"
        if not p.exists():
            sf.write(p, synthetic_speech(float(rng.uniform(2, 12)), 100 + i), 16000, subtype="PCM_16")
        paths.append(str(p))
    total_s = sum(sf.info(p).duration for p in paths)
    print(f"paraformer_ext demo: {len(paths)} synthetic utterances ({total_s:.1f} s of audio) in {wav_dir}")
    print("NOTE: the model has RANDOM weights, so the text is meaningless; the pipeline, the kernels and the timings are real.\n")
    use_kernels = resolve_kernels(False if a.no_kernels else None, a.device)
    runs = {}
    quant = getattr(a, "quantize", None)
    plan = ([("kernels", True, None)] if use_kernels else []) + [("reference", False, None)]
    plan += [(quant, use_kernels, quant)] if quant else []
    for name, kernels, q in plan:
        asr = load(model_dir, device=a.device, dtype=a.dtype, kernels=kernels, quantize=q,
                   quantize_output_layer=getattr(a, "quantize_output_layer", False),
                   cif_threshold=getattr(a, "cif_threshold", "tail"))
        asr.transcribe(paths[:1], batch_size=1)  # warm-up
        t0 = time.perf_counter()
        res = asr.transcribe(paths, batch_size=a.batch_size, timestamps=True)
        runs[name] = (time.perf_counter() - t0, res)
    main_name = "kernels" if use_kernels else "reference"
    for r in runs[main_name][1]:
        print(f"{r['key']}\t{len(r['token_ids'])} tokens\t{r['text'][:40]}{'...' if len(r['text']) > 40 else ''}")
    print()
    for name, (sec, _) in runs.items():
        print(f"{name:>9}: {sec:.2f} s for {total_s:.1f} s of audio ({total_s / sec:.1f}x real time) on {a.device}, {a.dtype}")
    if "kernels" in runs:
        same = sum(x["token_ids"] == y["token_ids"] and x["timestamp"] == y["timestamp"] for x, y in zip(runs["kernels"][1], runs["reference"][1]))
        print(f"kernels vs reference: identical token ids and timestamps for {same}/{len(paths)} utterances")
    if quant:
        pairs = [(x["token_ids"], y["token_ids"]) for x, y in zip(runs[quant][1], runs["reference"][1])]
        same = sum(u == v for x, y in pairs if len(x) == len(y) for u, v in zip(x, y))
        total = sum(len(y) for _, y in pairs)
        print(f"{quant} vs float reference: {same}/{total} token positions agree "
              f"({sum(len(x) != len(y) for x, y in pairs)} utterances with a different token count)")
    print(f"\nTry: paraformer-ext transcribe --model {model_dir} {paths[0]} --timestamps --json")
    return 0
