"""What one kernel launch costs on this CUDA machine: the floor under every small-batch timing.

    python benchmarks/cuda_launch.py [--json out.json]

Rows (microseconds per call, median of 5 rounds):
* ``eager_enqueue``: ``torch.add`` on a 1-element tensor, N calls back to back, one synchronize at the end:
  the host's cost to dispatch and enqueue a kernel (the GPU work itself is ~2 µs);
* ``eager_roundtrip``: the same with a synchronize after each call (launch + completion + wake-up);
* ``graph_replay``: N adds captured in one CUDA graph, replayed: the GPU-side cost per kernel without the host;
* ``cif_op``: our fused CIF op on B=1, T=8, D=8 (dispatch through the torch.library op + its checks).
A model that launches L kernels per forward runs at most ~1e6 / (L * eager_enqueue) forwards a second unless the
batch is large or the forward is captured in a graph.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def per_call_us(fn, n: int, rounds: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("cuda_launch.py measures a CUDA device; none is visible")
    x = torch.zeros(1, device="cuda")
    y = torch.empty_like(x)
    rows = {"eager_enqueue": per_call_us(lambda: torch.add(x, 1, out=y), a.n)}

    def roundtrip():
        torch.add(x, 1, out=y)
        torch.cuda.synchronize()

    rows["eager_roundtrip"] = per_call_us(roundtrip, a.n // 4)
    k = 100
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            torch.add(x, 1, out=y)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(k):
            torch.add(x, 1, out=y)
    rows["graph_replay"] = per_call_us(g.replay, max(1, a.n // k)) / k
    try:
        from paraformer_ext.ops.cif import cif_fn

        h = torch.randn(1, 8, 8, device="cuda")
        al = torch.full((1, 8), 0.4, device="cuda")
        rows["cif_op"] = per_call_us(lambda: cif_fn(h, al, 1.0), a.n // 4)
    except Exception as e:  # the row says why it is missing; the others still stand
        rows["cif_op_error"] = f"{type(e).__name__}: {e}"
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "n": a.n, "us_per_call": rows}
    for name, v in rows.items():
        print(f"{name:16s} {v:10.2f} us" if isinstance(v, float) else f"{name:16s} {v}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
