#!/usr/bin/env python3
"""Cross-check paraformer_ext's VAD post-processing against FunASR's own code on random posteriors.

    python scripts/crosscheck_vad_funasr.py PATH/TO/funasr/models/fsmn_vad_streaming/model.py [--seed 0] [--cases 200]

FunASR's `FsmnVADStreaming.inference` (the offline driver with its 60 s chunks, the dynamic schedule and the
state machine) is executed as it is, from the given source file, with stand-ins for what it imports: the
frontend emits frames the way FunASR's online frontend does (5996, 6000, …, rest; spec fsmn_vad.md §4.2) and
the "encoder" returns the test's silence posteriors. Random posteriors (runs of speech-like and silence-like
values, flicker), random lengths (incl. multiples of 60 s ± a few samples), both modes and varied model_conf
options go through both; the segments must be identical, also when paraformer_ext gets the posteriors in
random pieces. Needs only torch and numpy (not FunASR's dependencies). Not part of the test suite: FunASR's
source is not available in CI. Get it with e.g. `pip download --no-deps funasr==1.4.16` (unzip the wheel) or
a FunASR checkout.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from paraformer_ext.vad.postprocess import VadOptions, VadPostprocessor, frame_count  # noqa: E402


class _PosteriorEncoder(torch.nn.Module):
    """Stands in for FunASR's FSMN encoder: 'features' are frame indices, the output column 0 is p_sil."""

    P = np.zeros(0)

    def __init__(self, **kw):
        super().__init__()

    def forward(self, feats, cache=None):
        p = torch.from_numpy(_PosteriorEncoder.P)[feats[0, :, 0].long()].float()
        return torch.stack([p, 1 - p], -1)[None]


def _extract_fbank(data, data_type=None, frontend=None, cache=None, is_final=False, **kw):
    # FunASR's online frontend: fbank frames need 400 samples; LFR (5, 1) holds back 2 frames until the end
    cache["n"] = cache.get("n", 0) + len(data[0])
    done = cache.get("emitted", 0)
    avail = frame_count(cache["n"])
    upto = avail if is_final else max(avail - 2, done)
    n = upto - done
    cache["emitted"] = upto
    if n <= 0:
        cache["aligned_waveforms"] = torch.zeros(1, 0)
        return torch.zeros(1, 0, 1), torch.tensor([0])
    cache["aligned_waveforms"] = torch.zeros(1, (n - 1) * 160 + 400)  # energies are unused at −100 dB thresholds
    return torch.arange(done, upto, dtype=torch.float32)[None, :, None], torch.tensor([n])


def load_funasr_model_module(path: Path):
    reg = types.ModuleType("funasr.register")
    reg.tables = types.SimpleNamespace(register=lambda *a, **k: (lambda c: c),
                                       encoder_classes={"FSMN": _PosteriorEncoder})
    dw = types.ModuleType("funasr.utils.datadir_writer")
    dw.DatadirWriter = object
    lu = types.ModuleType("funasr.utils.load_utils")
    lu.load_audio_text_image_video = lambda data_in, **kw: [data_in[0]]
    lu.extract_fbank = _extract_fbank
    stubs = {"funasr": types.ModuleType("funasr"), "funasr.register": reg, "funasr.utils": types.ModuleType("funasr.utils"),
             "funasr.utils.datadir_writer": dw, "funasr.utils.load_utils": lu}
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    try:
        mod = types.ModuleType("funasr_fsmn_vad_model")
        exec(compile(path.read_text(), str(path), "exec"), mod.__dict__)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return mod


def funasr_segments(mod, p, n_samples, conf, runtime):
    _PosteriorEncoder.P = p
    model = mod.FsmnVADStreaming(encoder="FSMN", encoder_conf={}, **conf)
    frontend = types.SimpleNamespace(fs=16000, frame_shift=10, lfr_n=1)
    with contextlib.redirect_stdout(io.StringIO()):  # FunASR prints warnings for odd settings
        res, _ = model.inference([torch.zeros(n_samples)], key=["k"], frontend=frontend, cache={}, device="cpu",
                                 **runtime)
    return res[0]["value"]


def random_posteriors(rng, T):
    out, speech, total = [], rng.random() < 0.5, 0
    while total < T:
        L = int(rng.geometric(1 / rng.choice([5, 20, 60, 200, 800])))
        seg = rng.uniform(0.0001, 0.35, L) if speech else rng.uniform(0.12, 0.999, L)
        if rng.random() < 0.3:
            flick = rng.random(L) < 0.1
            seg[flick] = rng.uniform(0.0001, 0.999, flick.sum())
        out.append(seg)
        total += L
        speech = not speech
    return np.concatenate(out)[:T].astype(np.float32).astype(np.float64)


def random_case(rng):
    r = rng.random()
    if r < 0.25:
        n = int(960000 * rng.integers(1, 4) + rng.integers(-200, 200))
    elif r < 0.5:
        n = int(rng.integers(400, 20000))
    else:
        n = int(rng.integers(400, 250 * 16000))
    conf = {}
    if rng.random() < 0.4:
        conf["max_single_segment_time"] = int(rng.choice([3000, 20000, 60000, 100000, 200000]))
    if rng.random() < 0.2:
        conf["lookback_time_start_point"] = int(rng.choice([0, 100, 300]))
    if rng.random() < 0.2:
        conf["lookahead_time_end_point"] = int(rng.choice([0, 50, 200]))
    if rng.random() < 0.15:
        conf["do_extend"] = 0
    if rng.random() < 0.1:
        conf["detect_mode"] = 0
        conf["max_start_silence_time"] = int(rng.choice([500, 3000]))
    if rng.random() < 0.15:
        conf["window_size_ms"] = int(rng.choice([100, 300]))
        conf["sil_to_speech_time_thres"] = int(rng.choice([50, 100, 150]))
        conf["speech_to_sil_time_thres"] = int(rng.choice([50, 100, 150]))
    if rng.random() < 0.1:
        conf["speech_2_noise_ratio"] = float(rng.choice([0.5, 2.0]))
    runtime = {}
    if rng.random() < 0.5:
        runtime["max_end_silence_time"] = float(rng.choice([0, 100, 150, 200, 300, 500, 800, 1500, 3000]))
        if rng.random() < 0.5:
            runtime["speech_noise_thres"] = float(rng.choice([0.0, 0.3, 0.5, 0.6, 0.8]))
    return n, conf, runtime


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_py", type=Path, help="FunASR's funasr/models/fsmn_vad_streaming/model.py")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", type=int, default=200)
    args = ap.parse_args(argv)
    mod = load_funasr_model_module(args.model_py)
    rng = np.random.default_rng(args.seed)
    bad = skipped = funasr_failed = 0
    n_segs = []
    for case in range(args.cases):
        n, conf, runtime = random_case(rng)
        T = frame_count(n)
        p = random_posteriors(rng, T)
        met, snt = runtime.get("max_end_silence_time"), runtime.get("speech_noise_thres")
        try:
            VadPostprocessor(VadOptions(**conf), met, snt)
        except ValueError:
            skipped += 1  # settings paraformer_ext rejects (FunASR fails on them too)
            continue
        try:
            ref = funasr_segments(mod, p, n, conf, runtime)
        except Exception as e:  # noqa: BLE001 - FunASR's own failures are counted, not compared
            funasr_failed += 1
            print(f"case {case}: FunASR raised {type(e).__name__}: {e} ({conf}, {runtime})")
            continue
        got = VadPostprocessor(VadOptions(**conf), met, snt).accept(p, final=True, num_samples=n)
        pp = VadPostprocessor(VadOptions(**conf), met, snt)
        cuts = sorted(rng.choice(np.arange(1, T), size=min(5, T - 1), replace=False)) if T > 2 else []
        got2, i = [], 0
        for j in cuts:
            got2 += pp.accept(p[i:j])
            i = j
        got2 += pp.accept(p[i:], final=True, num_samples=n)
        n_segs.append(len(ref))
        if got != ref or got2 != ref:
            bad += 1
            print(f"MISMATCH case {case}: N={n} {conf} {runtime}\n  funasr {ref[:8]}\n  ours   {got[:8]}")
    print(f"{args.cases} cases: {bad} mismatches, {skipped} rejected settings, {funasr_failed} FunASR failures; "
          f"segments per case: mean {np.mean(n_segs):.1f}, max {max(n_segs)}, {n_segs.count(0)} without speech")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
