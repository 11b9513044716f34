"""Streaming cost (issue 17): many streams decoded together, fed in real time, on CPU.

    python benchmarks/bench_streaming.py [--preset large] [--streams 1 16 64] [--chunk 10] [--threads 2] \
        [--seconds 12] [--out benchmarks/results/streaming_cpu.json]

The preset's random-weight checkpoint (../shared/golden/make_checkpoint.py, as bench_e2e uses) under the
paraformer-large-online config (synthetic.online_variant): same shapes as paraformer-zh-streaming. N streams
start together; every tick each gets one chunk of audio (chunk · 60 ms, different stretches of the shared wavs)
and Recognizer.decode_streams runs one batched step for all. Per tick: compute ms; per N: median and p90
tick time, real-time factor (compute / audio time per stream; < 1 keeps up), and the first partial's latency
(audio time until the chunk that produced a stream's first token, plus that tick's compute).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, shared_dir  # noqa: E402
from e2e import model_dir_for  # noqa: E402


def audio(seconds: float, n: int, sr: int = 16000) -> list[np.ndarray]:
    """n different stretches of `seconds` from the shared wavs played in a loop (synthetic speech without them)."""
    from paraformer_ext.audio import load_audio

    sh = shared_dir()
    if sh is not None:
        loop = np.concatenate([load_audio(str(p), target_sr=sr).numpy() for p in sorted((sh / "audio").glob("*.wav"))])
    else:
        from paraformer_ext.synthetic import synthetic_speech

        loop = synthetic_speech(30.0, 0)
    need = int(seconds * sr)
    loop = np.tile(loop, need // loop.size + 2)
    step = max(1, (loop.size - need) // max(n, 1))
    return [loop[i * step: i * step + need].astype(np.float32) for i in range(n)]


def run(asr, n: int, chunk: int, seconds: float, sr: int = 16000) -> dict:
    waves = audio(seconds, n, sr)
    hop = chunk * 960  # FunASR's chunk: chunk_size[1] · 960 samples
    streams = [asr.stream(chunk_size=chunk) for _ in range(n)]
    ticks, first = [], [None] * n
    pos = 0
    while pos < waves[0].size:
        end = min(pos + hop, waves[0].size)
        last = end >= waves[0].size
        for s, w in zip(streams, waves):
            s.accept(w[pos:end], sr, decode=False)
            if last:
                s.finish(decode=False)
        t0 = time.perf_counter()
        asr.decode_streams(streams)
        dt = time.perf_counter() - t0
        ticks.append(dt)
        for i, s in enumerate(streams):
            if first[i] is None and s.token_ids:
                first[i] = end / sr * 1000 + dt * 1000
        pos = end
    audio_s = waves[0].size / sr
    ms = sorted(t * 1000 for t in ticks)
    got = [f for f in first if f is not None]
    return {"streams": n, "ticks": len(ticks), "chunk_ms": chunk * 60, "tick_ms_median": round(statistics.median(ms), 2),
            "tick_ms_p90": round(ms[int(0.9 * (len(ms) - 1))], 2), "rtf": round(sum(ticks) / audio_s, 4),
            "keeps_up": sum(ticks) / audio_s < 1.0,
            "first_partial_ms_median": round(statistics.median(got), 1) if got else None,
            "streams_without_tokens": n - len(got), "tokens_per_stream": round(sum(len(s.token_ids) for s in streams) / n, 1)}


def main() -> int:
    from paraformer_ext import load
    from paraformer_ext.synthetic import online_variant

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="large")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--chunk", type=int, default=10, help="chunk_size[1]: 10 = 600 ms")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=12.0, help="audio per stream")
    ap.add_argument("--kernels", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/streaming_cpu.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    src = Path(model_dir_for(a.preset))
    d = online_variant(src, src.parent / f"{src.name}_online")
    asr = load(d, kernels=bool(a.kernels))
    run(asr, 1, a.chunk, 2.0)  # warm-up
    rows = []
    for n in a.streams:
        r = run(asr, n, a.chunk, a.seconds)
        rows.append(r)
        print(f"{n:3d} streams: tick median {r['tick_ms_median']} ms (p90 {r['tick_ms_p90']}) per {r['chunk_ms']} ms "
              f"chunk, RTF {r['rtf']}, first partial {r['first_partial_ms_median']} ms", flush=True)
    res = {"command": "python " + " ".join(sys.argv), "preset": a.preset, "threads": a.threads, "kernels": bool(a.kernels),
           "seconds_per_stream": a.seconds, "rows": rows, "machine": platform.platform(), "processor": platform.processor(),
           "torch": torch.__version__, "note": "random weights: token counts are not a trained model's"}
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
