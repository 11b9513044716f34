"""Long-audio transcription in bounded memory (issue 7): a file built by repeating the real speech of
../shared/audio with gaps (synthetic speech when that folder is absent), transcribed through VAD → batched
engine, in a fresh process per length so peak RSS is that run's own.

    python benchmarks/bench_long_audio.py --preset large --minutes 10 180 --device cpu --threads 2 \
        [--out benchmarks/results/long_audio_cpu.json]

Prints one row per length: audio minutes, wall seconds, real-time factor, VAD segments, tokens, peak RSS of the
process (MB; the model load included), RSS after loading and the peak while transcribing (VmHWM reset after the
load), and peak CUDA memory.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, max_rss_mb, proc_status_mb, reset_peak_rss, shared_dir  # noqa: E402


def build_long_wav(path: Path, minutes: float, seed: int = 0) -> Path:
    """Real speech with 0.3-3 s gaps of -60 dBFS noise, written block by block (never all in memory)."""
    import soundfile as sf

    if path.exists():
        return path
    sh = shared_dir()
    if sh is not None:
        clips = [sf.read(str(p), dtype="int16")[0] for p in sorted((sh / "audio").glob("*.wav"))]
    else:
        from paraformer_ext.synthetic import synthetic_speech

        clips = [(synthetic_speech(s, seed + i) * 32767).astype(np.int16) for i, s in enumerate((5.5, 8.0, 5.0))]
    rng = np.random.default_rng(seed)
    total = int(minutes * 60 * 16000)
    tmp = path.with_suffix(".tmp.wav")
    written = 0
    with sf.SoundFile(str(tmp), "w", 16000, 1, subtype="PCM_16") as f:
        while written < total:
            gap = (rng.normal(0, 32768 * 1e-3, int(rng.uniform(0.3, 3.0) * 16000))).astype(np.int16)
            block = np.concatenate([clips[int(rng.integers(len(clips)))], gap])[: total - written]
            f.write(block)
            written += block.size
    tmp.rename(path)
    return path


def child(a) -> None:
    """Runs in a fresh process: load, transcribe one file, report time and peak memory as JSON."""
    import torch

    import paraformer_ext

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    asr = paraformer_ext.load(a.model, device=a.device, dtype=a.dtype, kernels=not a.no_kernels)
    load_s = time.perf_counter() - t0
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # The process's peak so far is the model load (checkpoint + weights); reset the kernel's high-water mark
    # so the transcription's own peak is measured too (Linux: writing 5 to clear_refs resets VmHWM).
    rss_after_load = proc_status_mb("VmRSS")
    hwm_reset = reset_peak_rss()
    t0 = time.perf_counter()
    r = asr.transcribe([a.wav], vad_model_dir=a.vad_model_dir)[0]
    wall = time.perf_counter() - t0
    import soundfile as sf

    dur = sf.info(a.wav).duration
    out = {
        "audio_s": dur, "wall_s": wall, "load_s": load_s, "rtf": wall / dur, "x_real_time": dur / wall,
        "segments": len(r.get("segments", [])), "tokens": len(r.get("token_ids", [])),
        "peak_rss_mb": max_rss_mb(),
        "rss_after_load_mb": rss_after_load,
        "peak_rss_during_transcription_mb": proc_status_mb("VmHWM") if hwm_reset else None,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if a.device == "cuda" else None,
        "error": r.get("error"),
    }
    print("RESULT " + json.dumps(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="large", choices=["small", "large"])
    ap.add_argument("--model", default=None, help="model dir (default: the golden checkpoint of --preset, else a random one)")
    ap.add_argument("--minutes", type=float, nargs="+", default=[10, 180])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-kernels", action="store_true")
    ap.add_argument("--vad-model-dir", default=None)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--wav", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a)
        return 0
    cache = Path(os.environ.get("PARAFORMER_EXT_CACHE", REPO / ".cache"))
    if a.model is None:
        sh = shared_dir()
        a.model = str(cache / "golden_ckpt" / a.preset)
        if sh is not None and not (Path(a.model) / "model.pt").exists():
            subprocess.run([sys.executable, str(sh / "golden" / "make_checkpoint.py"), "--preset", a.preset, a.model], check=True,
                           stdout=subprocess.DEVNULL)
        elif sh is None:
            from paraformer_ext.synthetic import make_random_model

            a.model = str(cache / f"random_{a.preset}")
            if not (Path(a.model) / "model.pt").exists():
                make_random_model(a.model, a.preset)
    rows = []
    for m in a.minutes:
        wav = build_long_wav(cache / f"long_{m:g}min.wav", m)
        cmd = [sys.executable, __file__, "--child", "--wav", str(wav), "--model", a.model, "--device", a.device, "--dtype", a.dtype,
               "--threads", str(a.threads)] + (["--no-kernels"] if a.no_kernels else []) + (
               ["--vad-model-dir", a.vad_model_dir] if a.vad_model_dir else [])
        p = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(p.stdout[-2000:], p.stderr[-4000:], file=sys.stderr)
            return 1
        row = {"minutes": m, **json.loads(line[7:])}
        rows.append(row)
        print(f"{m:>6g} min  wall {row['wall_s']:8.1f} s  {row['x_real_time']:7.1f}x real time  segments {row['segments']:5d}  "
              f"tokens {row['tokens']:6d}  peak RSS {row['peak_rss_mb']:7.0f} MB (after load {row['rss_after_load_mb']:.0f}, "
              f"peak while transcribing {row['peak_rss_during_transcription_mb'] or float('nan'):.0f})"
              + (f"  peak CUDA {row['peak_cuda_mb']:.0f} MB" if row["peak_cuda_mb"] else ""), flush=True)
    if a.out:
        import torch

        meta = {"command": " ".join(sys.argv), "preset": a.preset, "device": a.device, "dtype": a.dtype, "threads": a.threads,
                "kernels": not a.no_kernels, "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "load_avg_at_end": os.getloadavg()}
        Path(a.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
