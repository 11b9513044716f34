"""FSMN-VAD speed and memory: real-time factor of `FsmnVad.segments` on the 4-minute golden file, and peak RSS
on long files (memory must not grow with the file length).

    .venv/bin/python benchmarks/bench_vad.py --threads 2                  # RTF on CPU, 4-minute file
    .venv/bin/python benchmarks/bench_vad.py --threads 2 --long 60 180    # + peak RSS on 60 and 180 min files
    .venv/bin/python benchmarks/bench_vad.py --device cuda                # GPU network (frontend on GPU too)
    .venv/bin/python -m pytest benchmarks/bench_vad.py --benchmark-only   # pytest-benchmark form (4 min file)

RTF = wall time / audio duration (lower is better), for the whole path: reading the wav in 60 s pieces,
fbank → LFR → CMVN, the FSMN network, the post-processing. Model loading is not timed. The stage split is
measured separately on the same audio. FunASR publishes no VAD-only figures (spec fsmn_vad.md has none), so
there is nothing to compare against but our own stages. Needs the golden data (../shared or
$PARAFORMER_EXT_SHARED); the fsmn-vad weights ship with the package.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, proc_status_mb, reset_peak_rss  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _shared() -> Path:
    env = os.environ.get("PARAFORMER_EXT_SHARED")
    for p in ([Path(env)] if env else []) + [REPO.parent / "shared", REPO / "shared"]:
        if (p / "golden" / "vad").is_dir():
            return p
    raise SystemExit("golden data not found: set PARAFORMER_EXT_SHARED")


def build_4min(out_dir: Path) -> Path:
    """vad_4min.wav, rebuilt bit-exactly by the golden script."""
    wav = out_dir / "vad_4min.wav"
    if not wav.exists():
        script = _shared() / "golden" / "vad" / "make_vad_audio.py"
        subprocess.run([sys.executable, str(script), "--only", "vad_4min", "--out-dir", str(out_dir)], check=True,
                       stdout=subprocess.DEVNULL)
    return wav


def build_long(src: Path, minutes: float, out_dir: Path) -> Path:
    """A long 16 kHz int16 wav: the 4-minute file repeated (written piecewise, never held whole)."""
    import soundfile as sf

    out = out_dir / f"vad_{minutes:g}min.wav"
    if out.exists():
        return out
    x, sr = sf.read(str(src), dtype="int16")
    total = int(minutes * 60 * sr)
    with sf.SoundFile(str(out), "w", samplerate=sr, channels=1, subtype="PCM_16") as f:
        done = 0
        while done < total:
            n = min(len(x), total - done)
            f.write(x[:n])
            done += n
    return out


def time_segments(vad, wav: Path, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        vad.segments(wav)
        if vad.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def stage_split(vad, wav: Path) -> dict:
    """Seconds spent in each stage on the whole file, run stage by stage in 60 s pieces."""
    from paraformer_ext.audio import load_audio
    from paraformer_ext.vad.model import BLOCK_FRAMES, _FeatureStream
    from paraformer_ext.vad.postprocess import VadPostprocessor

    x = load_audio(wav)
    sync = torch.cuda.synchronize if vad.device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    fs = _FeatureStream(vad.frontend_config, vad.cmvn, vad.device, False)
    step = 960000
    feats = [fs.accept(x[i : i + step])[0] for i in range(0, x.numel(), step)] + [fs.accept(x[:0], final=True)[0]]
    feats = torch.cat(feats)
    sync()
    t1 = time.perf_counter()
    cache, ps = None, []
    with torch.inference_mode():
        for i in range(0, feats.size(0), BLOCK_FRAMES):
            s, cache = vad.encoder(feats[None, i : i + BLOCK_FRAMES], cache)
            ps.append(s[0, :, 0].double().cpu().numpy())
    sync()
    t2 = time.perf_counter()
    p = np.concatenate(ps)
    VadPostprocessor(vad.options).accept(p, final=True, num_samples=x.numel())
    t3 = time.perf_counter()
    return {"frontend_s": t1 - t0, "network_s": t2 - t1, "postprocess_s": t3 - t2}


def _rss_child(wav: str, threads: int, device: str) -> dict:
    """Runs in a fresh process: load, VAD one file, report time and peak RSS."""
    torch.set_num_threads(threads)
    from paraformer_ext.vad import FsmnVad

    import soundfile as sf

    vad = FsmnVad.load(device=device)
    vad.segments(np.zeros(16000, dtype=np.float32))  # first-call allocations (caches, thread pools)
    load_peak = peak_rss_mb()
    base = proc_status_mb("VmRSS")
    reset = reset_peak_rss()
    t0 = time.perf_counter()
    segs = vad.segments(wav)
    dt = time.perf_counter() - t0
    dur = sf.info(wav).duration
    peak = peak_rss_mb()
    return {"file": wav, "duration_s": dur, "segments": len(segs), "wall_s": dt, "rtf": dt / dur,
            "rss_before_mb": base, "peak_rss_mb": max(peak, load_peak) if not reset else peak,
            "peak_during_vad_minus_before_mb": (peak - base) if reset else None, "peak_during_load_mb": load_peak}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--long", type=float, nargs="*", default=[], metavar="MIN",
                    help="also measure peak RSS (fresh process each) on files of these many minutes")
    ap.add_argument("--work-dir", help="where to build the audio (default: a temporary folder)")
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_rss_child(args.child, args.threads, args.device)))
        return 0

    torch.set_num_threads(args.threads)
    from paraformer_ext import build_info
    from paraformer_ext.vad import FsmnVad

    tmp = tempfile.TemporaryDirectory() if not args.work_dir else None
    work = Path(args.work_dir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    wav = build_4min(work)
    import soundfile as sf

    dur = sf.info(str(wav)).duration
    vad = FsmnVad.load(device=args.device)
    vad.segments(wav)  # warm-up
    times = time_segments(vad, wav, args.repeat)
    split = stage_split(vad, wav)
    res = {
        "what": "FsmnVad.segments(vad_4min.wav), default mode, whole path from the wav file",
        "device": args.device if args.device != "cuda" else torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "kernels": build_info().get("cpu", False),
        "audio_s": round(dur, 3),
        "wall_s_best": round(min(times), 4),
        "wall_s_median": round(float(np.median(times)), 4),
        "rtf_best": round(min(times) / dur, 5),
        "rtf_median": round(float(np.median(times)) / dur, 5),
        "stages_s": {k: round(v, 4) for k, v in split.items()},
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "command": " ".join([Path(sys.executable).name, "benchmarks/bench_vad.py"] + (argv or sys.argv[1:])),
    }
    print(f"4-minute file ({dur:.1f} s) on {res['device']}, {res['threads']} threads: best {min(times):.3f} s "
          f"(RTF {res['rtf_best']:.4f}, {dur / min(times):.0f}x real time), median RTF {res['rtf_median']:.4f}")
    print("  stages: " + ", ".join(f"{k} {v:.3f} s" for k, v in split.items()))
    if args.long:
        res["long"] = []
        for minutes in [4.0] + list(args.long):
            f = wav if minutes == 4.0 else build_long(wav, minutes, work)
            cmd = [sys.executable, __file__, "--child", str(f), "--threads", str(args.threads), "--device",
                   args.device]
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            res["long"].append(r)
            grow = r["peak_during_vad_minus_before_mb"]
            print(f"  {r['duration_s'] / 60:7.1f} min: {r['segments']:5d} segments, RTF {r['rtf']:.4f}, RSS before "
                  f"{r['rss_before_mb']:.0f} MB, peak during VAD {r['peak_rss_mb']:.0f} MB"
                  + (f" (+{grow:.0f} MB)" if grow is not None else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


# --- pytest-benchmark form -------------------------------------------------------------------------------


def test_vad_4min_cpu(benchmark, tmp_path_factory):
    from paraformer_ext.vad import FsmnVad

    wav = build_4min(tmp_path_factory.mktemp("vad_bench"))
    vad = FsmnVad.load()
    segs = benchmark(vad.segments, wav)
    assert len(segs) == 28
    import soundfile as sf

    dur = sf.info(str(wav)).duration
    rtf = benchmark.stats.stats.mean / dur
    benchmark.extra_info.update(audio_s=dur, rtf=round(rtf, 5), threads=torch.get_num_threads())
    print(f"\nFsmnVad.segments on {dur:.0f} s: RTF {rtf:.4f} ({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    sys.exit(main())
