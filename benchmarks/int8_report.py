"""int8 Paraformer report (issue 5): per-layer error, end-to-end token agreement, speed and memory, one run.

    python benchmarks/int8_report.py --device cpu --threads 2 --json benchmarks/results/int8_cpu.json

* Per layer: relative error (Frobenius) of the int8 Linear vs float32 on random inputs, for every Linear shape
  of the `large` preset: LayerNorm-like Gaussian rows and ReLU outputs, plain int8 and split activations.
* End to end on the golden audio (`large`): token agreement of int8 with FunASR's float32 goldens and with our
  float32, overall and where FunASR's top-1/top-2 gap exceeds 0.05 (benchmarks/precision.py).
* Speed: transcribing the golden wavs (batch 1 and both in one batch), float32 vs int8 (and int8 without split
  activations), timed passes interleaved in one process; medians.
* Memory: model weights and buffers; peak RSS of a fresh process that loads the model and transcribes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, proc_status_mb, shared_dir, sync  # noqa: E402

WAVS = ["asr_example", "long"]
LAYERS = {  # name: (in, out, input kind) of the large preset
    "encoders0 QKV": (560, 1536, "ln"),
    "QKV": (512, 1536, "ln"),
    "attention out": (512, 512, "ln"),
    "FFN w_1": (512, 2048, "ln"),
    "FFN w_2": (2048, 512, "relu"),
    "cross-att q": (512, 512, "ln"),
    "cross-att k_v": (512, 1024, "ln"),
    "output layer": (512, 8404, "ln"),
}


def per_layer(device, rows=512, seed=0) -> list[dict]:
    from paraformer_ext.ops.int8 import int8_linear, int8_linear_split, quantize_weight_ref

    g = torch.Generator().manual_seed(seed)
    out = []
    for name, (K, N, kind) in LAYERS.items():
        w = (torch.randn(N, K, generator=g) / K**0.5).to(device)
        b = (0.1 * torch.randn(N, generator=g)).to(device)
        x = torch.randn(rows, K, generator=g).to(device)
        if kind == "relu":
            x = torch.relu(x)
        ref = F.linear(x.double(), w.double(), b.double())
        wq, ws = quantize_weight_ref(w)
        rel = lambda y: float((y.double() - ref).norm() / ref.norm())  # noqa: E731
        row = {"layer": name, "K": K, "N": N, "input": kind,
               "rel_err_weights_only": rel(F.linear(x, wq.float() * ws[:, None], b))}
        try:
            row["rel_err_int8"] = rel(int8_linear(x, wq, ws, b))
            row["rel_err_int8_split_activations"] = rel(int8_linear_split(x, wq, ws, b))
        except ValueError as e:  # a shape the device's int8 GEMM refuses (CUDA: torch._int_mm's multiples of 8)
            row["int8"] = str(e)
        out.append(row)
    return out


def model_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def child(a) -> None:
    """Fresh process: load one configuration, transcribe the golden wavs twice, print peak RSS (MB)."""
    torch.set_num_threads(a.threads)
    import paraformer_ext

    asr = paraformer_ext.load(a.model_dir, device=a.device, **json.loads(a.child))
    paths = [str(shared_dir() / "audio" / f"{w}.wav") for w in WAVS]
    for _ in range(2):
        asr.transcribe(paths)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking parent (which holds three models)
    print(json.dumps({"peak_rss_mb": proc_status_mb("VmHWM"), "model_mb": model_bytes(asr.model) / 1e6}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default=None, help="float dtype of the float and int8 models (default: float32 on "
                    "CPU, float16 on CUDA)")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", default=None)
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)
    torch.set_num_threads(a.threads)
    if a.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    shared = shared_dir()
    if shared is None:
        sys.exit("int8_report.py needs ../shared (golden audio); set PARAFORMER_EXT_SHARED")
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import golden_checkpoint
    from precision import compare

    import paraformer_ext

    model_dir = Path(a.model_dir) if a.model_dir else golden_checkpoint("large")
    dtype = a.dtype or ("float16" if a.device == "cuda" else "float32")
    res: dict = {"per_layer": per_layer(a.device)}
    for r in res["per_layer"]:
        print(f"{r['layer']:15} {r['K']:5}x{r['N']:<5} int8 {r['rel_err_int8']:.2e}  split {r['rel_err_int8_split_activations']:.2e}"
              f"  weights-only {r['rel_err_weights_only']:.2e}", flush=True)

    systems = {
        "float": paraformer_ext.load(model_dir, device=a.device, dtype=dtype),
        "int8": paraformer_ext.load(model_dir, device=a.device, dtype=dtype, quantize="int8"),
    }
    # the same int8 weights with split (two-part) activations in the encoder's QKV projections (an option)
    split = paraformer_ext.load(model_dir, device=a.device, kernels=True)
    split.quantize(split=lambda name: name.startswith("encoder.") and name.endswith("linear_q_k_v"))
    split.model.cast(getattr(torch, dtype)).set_kernels(True)
    systems["int8-split-qkv"] = split

    paths = [str(shared / "audio" / f"{w}.wav") for w in WAVS]
    audio_s = sum(paraformer_ext.load_audio(p).numel() for p in paths) / 16000
    float_ids = {w: systems["float"].transcribe(p)[0]["token_ids"] for w, p in zip(WAVS, paths)}
    agreement = []
    for name, asr in systems.items():
        for w in WAVS:
            r = compare(asr, shared, "large", w)
            ours = asr.transcribe(str(shared / "audio" / f"{w}.wav"))[0]["token_ids"]
            same_len = len(ours) == len(float_ids[w])
            r["agree_with_our_float"] = sum(x == y for x, y in zip(ours, float_ids[w])) if same_len else None
            r["system"] = name
            agreement.append(r)
            print(f"{name:14} {w:12} vs FunASR fp32: {r['agree']}/{r['positions']} (gap>0.05: {r['agree_margin_gt_0.05']}/"
                  f"{r['positions_margin_gt_0.05']}), vs our {dtype}: {r['agree_with_our_float']}/{len(float_ids[w])}", flush=True)
    res["agreement"] = agreement

    timings = {(n, b): [] for n in systems for b in (1, 2)}
    for asr in systems.values():
        asr.transcribe(paths, batch_size=2)
    for _ in range(a.repeat):  # interleaved: the machine's load drifts
        for (n, b), ts in timings.items():
            sync(a.device)
            t0 = time.perf_counter()
            systems[n].transcribe(paths, batch_size=b)
            sync(a.device)
            ts.append(time.perf_counter() - t0)
    speed = []
    for (n, b), ts in timings.items():
        med = statistics.median(ts)
        base = statistics.median(timings[("float", b)])
        speed.append({"system": n, "batch_size": b, "median_s": med, "min_s": min(ts), "rtf_x": audio_s / med,
                      "speedup_vs_float": base / med})
        print(f"{n:14} batch {b}: {med * 1e3:7.1f} ms  ({audio_s / med:6.1f}x real time, {base / med:.2f}x float)", flush=True)
    res["speed"] = speed

    mem = []
    for name, kw in [("float", {"dtype": dtype}), ("int8", {"dtype": dtype, "quantize": "int8"})]:
        out = subprocess.run([sys.executable, __file__, "--device", a.device, "--threads", str(a.threads),
                              "--model-dir", str(model_dir), "--child", json.dumps(kw)],
                             capture_output=True, text=True, check=True)
        m = json.loads(out.stdout.strip().splitlines()[-1])
        m["system"] = name
        mem.append(m)
        print(f"{name:14} model {m['model_mb']:.0f} MB, peak RSS {m['peak_rss_mb']:.0f} MB", flush=True)
    mem_ratio = mem[1]["model_mb"] / mem[0]["model_mb"]
    print(f"int8 model memory: {100 * mem_ratio:.1f}% of {dtype}")
    res["memory"] = {"runs": mem, "int8_model_fraction": mem_ratio}
    res["env"] = {"torch": torch.__version__, "python": platform.python_version(), "device": a.device,
                  "threads": a.threads, "dtype": dtype, "audio_s": audio_s, "load_avg_1min": os.getloadavg()[0],
                  "build_info": paraformer_ext.build_info(), "date": time.strftime("%Y-%m-%d"),
                  "cpu": platform.processor() or platform.machine(),
                  "command": "python " + " ".join(sys.argv)}
    if a.device == "cuda":
        res["env"]["gpu"] = torch.cuda.get_device_name(0)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
