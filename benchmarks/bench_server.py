"""The websocket server under load (issue 13): 64 connections at once, each streaming its own file (half at
real-time pace, half as fast as possible), against the offline engine's batched throughput on the same files
and against the same server recognizing one connection's segment at a time (batch size 1).

    python benchmarks/bench_server.py --preset large --threads 2 [--connections 64] [--out benchmarks/results/server_cpu.json]

The server runs in this process (a thread with its event loop, the worker thread); the clients run in a child
process, so that their work does not share this interpreter's lock. Reports, per run: throughput (audio seconds
per wall second, from the first connection to the last final result), p50/p95 latency from the end message to
the final result, the server process's RSS, and whether every transcript equals the engine's. A third run has
every client send as fast as possible (throughput without the pacing). And the ceilings of the two ratios on
this machine: the engine's own gain from batching (the same files, one per call: a server that batches cannot
beat one that does not by much more) and the pacing floor (paced_floor_s).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, peak_rss_mb, proc_status_mb, reset_peak_rss, shared_dir  # noqa: E402


def make_files(d: Path, n: int) -> list[Path]:
    """n different files from the shared speech: each a different crop and gain of one of the clips."""
    import soundfile as sf

    sh = shared_dir()
    if sh is None:
        sys.exit("../shared/audio not found (set PARAFORMER_EXT_SHARED)")
    clips = [sf.read(str(p), dtype="int16")[0] for p in sorted((sh / "audio").glob("*.wav"))]
    out = []
    for i in range(n):
        x = clips[i % len(clips)].astype(np.float64)
        start = (i // len(clips)) * 800 % max(1, len(x) // 4)  # 50 ms steps into the first quarter
        y = np.clip(np.round(x[start:] * (0.6 + 0.4 * ((i * 7) % 11) / 10)), -32768, 32767).astype(np.int16)
        p = d / f"f{i:03d}.wav"
        sf.write(p, y, 16000, subtype="PCM_16")
        out.append(p)
    return out


def clients_main(uri: str, files: list[str], realtime_every: int) -> None:
    """The child process: all connections at once, offline mode; prints one JSON line."""
    from paraformer_ext.server.client import recognize

    async def go():
        t0 = time.perf_counter()
        rs = await asyncio.gather(*(recognize(uri, f, mode="offline", realtime=1.0 if i % realtime_every == 0 else 0.0,
                                              wav_name=Path(f).stem) for i, f in enumerate(files)))
        return rs, time.perf_counter() - t0

    rs, wall = asyncio.run(go())
    print(json.dumps({"wall_s": wall, "results": [{"key": r["wav_name"], "text": r.get("text"), "error": r.get("error"),
                                                    "latency_s": r.get("latency_s")} for r in rs]}, ensure_ascii=False))


def paced_floor_s(paced_durations: list[float], engine_audio_s_per_s: float) -> float:
    """The earliest any server can finish when clients send these files in real time: a file cannot be started
    before its last byte arrives, so for each arrival time t, everything arriving at t or later still needs its
    audio / (the engine's batched speed) after t. (The files sent as fast as possible arrive at once.)"""
    d = sorted(paced_durations)
    return max((t + sum(d[i:]) / engine_audio_s_per_s for i, t in enumerate(d)), default=0.0)


def run_server(asr, vad, files, audio_s, expected, realtime_every, **options) -> dict:
    from paraformer_ext.server import Server, ServerOptions

    loop = asyncio.new_event_loop()
    srv = Server(asr, ServerOptions(port=0, max_connections=1024, **options), vad=vad)
    th = threading.Thread(target=loop.run_forever, daemon=True)
    th.start()
    asyncio.run_coroutine_threadsafe(srv.start(), loop).result(120)
    reset_peak_rss()
    rss_before = proc_status_mb("VmRSS")
    import resource

    cpu0 = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    try:
        r = subprocess.run([sys.executable, __file__, "--clients", f"ws://127.0.0.1:{srv.port}",
                            "--realtime-every", str(realtime_every), *map(str, files)],
                           capture_output=True, text=True, check=True)
    finally:
        asyncio.run_coroutine_threadsafe(srv.shutdown(), loop).result(120)
        loop.call_soon_threadsafe(loop.stop)
        th.join()
    cpu1 = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    cpu = [(b.ru_utime + b.ru_stime) - (a.ru_utime + a.ru_stime) for a, b in zip(cpu0, cpu1)]
    out = json.loads(r.stdout.splitlines()[-1])
    lat = sorted(x["latency_s"] for x in out["results"] if x["latency_s"] is not None)
    mismatched = [x["key"] for x in out["results"] if x["error"] or x["text"] != expected[x["key"]]]
    return {"options": options, "wall_s": out["wall_s"], "throughput_audio_s_per_s": audio_s / out["wall_s"],
            "latency_p50_s": statistics.median(lat), "latency_p95_s": lat[int(round(0.95 * (len(lat) - 1)))],
            "batches": srv.worker.batches, "segments": srv.worker.segments,
            "rss_before_mb": rss_before, "peak_rss_mb": peak_rss_mb(),
            # CPU seconds of this process (server + worker) and of the clients' process: on 2 cores the clients'
            # share is taken from the server
            "server_cpu_s": cpu[0], "clients_cpu_s": cpu[1],
            "transcripts_equal_engine": not mismatched, "mismatched": mismatched}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="large", choices=["small", "large"])
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--realtime-every", type=int, default=2, help="every k-th connection streams at real-time pace")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--note", default="", help="free text kept in the JSON (e.g. what else loaded the machine)")
    ap.add_argument("--clients", default=None, help=argparse.SUPPRESS)
    ap.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.clients:
        return clients_main(a.clients, a.files, a.realtime_every)

    import torch

    torch.set_num_threads(a.threads)
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import golden_checkpoint

    from paraformer_ext import load
    from paraformer_ext.vad import FsmnVad

    asr, vad = load(golden_checkpoint(a.preset)), FsmnVad.load()
    with tempfile.TemporaryDirectory() as tmp:
        files = make_files(Path(tmp), a.connections)
        import soundfile as sf

        audio_s = sum(sf.info(str(f)).duration for f in files)
        asr.transcribe(files[:2], timestamps=True)  # warm up
        t0, c0 = time.perf_counter(), time.process_time()
        ref = asr.transcribe(files, timestamps=True)
        engine_wall, engine_cpu = time.perf_counter() - t0, time.process_time() - c0
        expected = {r["key"]: r["text"] for r in ref}
        engine = {"wall_s": engine_wall, "cpu_s": engine_cpu, "throughput_audio_s_per_s": audio_s / engine_wall}
        print(f"engine (batched, offline): {audio_s:.0f} s of audio in {engine_wall:.1f} s ({engine_cpu:.1f} CPU s) = "
              f"{engine['throughput_audio_s_per_s']:.1f} audio-s/s", flush=True)
        t0 = time.perf_counter()
        for f in files:  # what batching can gain at most: the same engine, one file per call
            asr.transcribe([f], timestamps=True)
        one_wall = time.perf_counter() - t0
        engine_one = {"wall_s": one_wall, "throughput_audio_s_per_s": audio_s / one_wall}
        print(f"engine (one file per call): {engine_one['throughput_audio_s_per_s']:.1f} audio-s/s", flush=True)
        floor_s = paced_floor_s([sf.info(str(f)).duration for i, f in enumerate(files) if i % a.realtime_every == 0],
                                engine["throughput_audio_s_per_s"])
        print(f"pacing floor: no server at the engine's batched speed ends before {floor_s:.1f} s", flush=True)
        runs = {}
        for name, every, opts in (("server_batched", a.realtime_every, {}),
                                  ("server_one_at_a_time", a.realtime_every, {"max_batch_size": 1, "max_wait_s": 0.0}),
                                  ("server_batched_unpaced", a.connections + 1, {})):
            runs[name] = r = run_server(asr, vad, files, audio_s, expected, every, **opts)
            print(f"{name}: {r['throughput_audio_s_per_s']:.1f} audio-s/s, p50 {r['latency_p50_s']:.2f} s, "
                  f"p95 {r['latency_p95_s']:.2f} s, {r['segments']} segments in {r['batches']} batches, peak RSS "
                  f"{r['peak_rss_mb']:.0f} MB, CPU s server / clients {r['server_cpu_s']:.1f} / {r['clients_cpu_s']:.1f}, "
                  f"transcripts equal the engine's: {r['transcripts_equal_engine']}", flush=True)
    b, s = runs["server_batched"], runs["server_one_at_a_time"]
    summary = {"batched_vs_engine": b["throughput_audio_s_per_s"] / engine["throughput_audio_s_per_s"],
               "batched_vs_one_at_a_time": b["throughput_audio_s_per_s"] / s["throughput_audio_s_per_s"],
               # ceilings of the two ratios on this machine: the engine's own batching gain, and the pacing floor
               "engine_batched_vs_one_per_call": engine["throughput_audio_s_per_s"] / engine_one["throughput_audio_s_per_s"],
               "paced_floor_s": floor_s, "batched_vs_paced_ceiling": b["throughput_audio_s_per_s"] / (audio_s / floor_s),
               "unpaced_batched_vs_engine": runs["server_batched_unpaced"]["throughput_audio_s_per_s"]
               / engine["throughput_audio_s_per_s"]}
    print(json.dumps(summary))
    if a.out:
        meta = {"command": "benchmarks/bench_server.py " + " ".join(sys.argv[1:]), "preset": a.preset,
                "connections": a.connections, "realtime_every": a.realtime_every, "threads": a.threads,
                "audio_s": audio_s, "cpu": platform.machine(), "torch": torch.__version__,
                "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "load_avg_at_end": os.getloadavg(),
                "note": a.note}
        Path(a.out).write_text(json.dumps({"meta": meta, "engine": engine, "engine_one_per_call": engine_one, **runs,
                                          "summary": summary}, indent=1,
                                          ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
