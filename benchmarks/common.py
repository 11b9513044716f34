"""Shared benchmark helpers: timing that respects CUDA's asynchrony, the device-to-device copy bandwidth
measured in the same run, the shared audio (or a synthetic stand-in when ../shared is absent), and peak
memory (resident set, torch's CPU and CUDA allocators; tests/test_out_proj.py uses the CPU one too)."""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    env = os.environ.get("PARAFORMER_EXT_SHARED")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared", REPO / "shared"]:
        if (cand / "audio").is_dir():
            return cand
    return None


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def cuda_median_ms(fn, warmup: int = 5, iters: int = 50) -> float:
    """Median of per-call CUDA event timings (ms)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


_COPY_BW: dict = {}


def copy_bandwidth_gbs(device="cuda", nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written (measured once)."""
    if device in _COPY_BW:
        return _COPY_BW[device]
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = cuda_median_ms(lambda: dst.copy_(src), warmup=3, iters=20)
    _COPY_BW[device] = 2 * nbytes / (ms * 1e-3) / 1e9
    return _COPY_BW[device]


def run_timed(benchmark, fn, device, rounds: int | None = None, warmup: int = 1):
    """pytest-benchmark with a CUDA sync inside the timed call; pedantic with `rounds` when given."""

    def call():
        out = fn()
        sync(device)
        return out

    if rounds is None:
        return benchmark(call)
    return benchmark.pedantic(call, rounds=rounds, warmup_rounds=warmup, iterations=1)


def wall_s(fn, device, repeat: int = 3) -> float:
    """Median wall time of fn() in seconds (synchronised)."""
    ts = []
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


# --- memory: the process's resident set (rss.py, torch-free) and torch's allocators ----------------------------

from rss import max_rss_mb, peak_rss_mb, proc_status_mb, reset_peak_rss  # noqa: E402,F401  (re-exported)


def peak_cpu_alloc_bytes(fn) -> int:
    """Peak bytes held through torch's CPU allocator (all threads) during fn(), above what was held before,
    from the profiler's memory records."""
    import json
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as d:
        prof.export_chrome_trace(str(Path(d) / "trace.json"))
        events = json.loads((Path(d) / "trace.json").read_text())["traceEvents"]
    mem = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    if not mem:
        return 0
    before = mem[0]["args"]["Total Allocated"] - mem[0]["args"]["Bytes"]
    return max(e["args"]["Total Allocated"] for e in mem) - before


def peak_cuda_bytes(fn) -> int:
    """Peak bytes allocated on the current CUDA device during fn(), above what was allocated before."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base
