"""Where a batched engine pass spends its time: cProfile (host) over one pass after two warm passes.

    python benchmarks/profile_engine.py --device cuda --dtype float16 [--n 64] [--preset large] [--top 30]

The workload is e2e.py's (slices of the shared audio, 2-20 s), the model its golden checkpoint of the preset.
Prints the pass's wall time, x real time, the engine's stage totals and the top functions by own time.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch

import paraformer_ext
from e2e import SR, build_workload, model_dir_for


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--preset", default="large", choices=["small", "large"])
    ap.add_argument("--n", type=int, default=64, help="utterances")
    ap.add_argument("--top", type=int, default=30)
    a = ap.parse_args()
    inputs, _, _ = build_workload(argparse.Namespace(seed=0, n=a.n, total_s=None, min_s=2.0, max_s=20.0, inputs="arrays"))
    audio_s = sum(len(x) for x in inputs) / SR
    asr = paraformer_ext.load(model_dir_for(a.preset), device=a.device, dtype=getattr(torch, a.dtype))

    def one_pass(profile: bool = False):
        eng = asr.engine(profile=profile, segmenter="none")
        if a.device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        n = sum(1 for _ in eng.run(inputs))
        if a.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t, n, eng

    with torch.inference_mode():
        for i in range(2):
            w, n, _ = one_pass()
            print(f"warm pass {i}: {w:.3f} s, {audio_s / w:.1f}x real time ({n} results)", flush=True)
        w, _, eng = one_pass(profile=True)
        print(f"profiled stage pass (syncs at each stage): {w:.3f} s; stages: "
              + ", ".join(f"{k} {v:.3f}" for k, v in eng.timer.totals.items()), flush=True)
        prof = cProfile.Profile()
        prof.enable()
        w, _, _ = one_pass()
        prof.disable()
    print(f"cProfiled pass: {w:.3f} s, {audio_s / w:.1f}x real time, {len(inputs)} utterances, {audio_s:.0f} s audio")
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(a.top)
    print(s.getvalue())


if __name__ == "__main__":
    main()
