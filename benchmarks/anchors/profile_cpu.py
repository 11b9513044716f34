"""Where a batch-1 call goes, ours (fp32, kernels) against ONNX Runtime fp32 (FunASR's CPU deployment), by op
class: the profile issue 18 asks to start from, and the one that shows what blocks fp32 at batch 1.

    .venv/bin/python benchmarks/anchors/profile_cpu.py [--wav ../shared/audio/asr_example.wav] [--threads 2]
                                                       [--calls 10] [--json benchmarks/results/cpu_profile.json]

Needs benchmarks/anchors/setup.sh (the `large` checkpoint, its ONNX export, the anchors venv). The ORT side runs
this file again in the anchors venv (--side ort). Each side: the wall time of a call split into the frontend
(fbank + LFR + CMVN), the network, and the rest (Python, decoding to text), medians of --calls calls after two
warm-ups; then the network's time by op class from one profiled pass of --calls calls (torch.profiler self CPU
time for ours, ORT's own node profiler for theirs), scaled to the median network time. Op classes: GEMM with
weights (every Linear / projection MatMul), attention (scores, softmax, context), FSMN (the depthwise memory
block), LayerNorm, CIF predictor, elementwise and copies. Shares are robust to a busy machine; the milliseconds
are as good as the machine was quiet. Also: torch's fp32 GEMM rates on weights that are not in cache
(cold_gemm_rates), the ceiling that matters at batch 1.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from protocol import ANCHORS_PYTHON, DEFAULT_MODEL, REPO, markdown_table, timed  # noqa: E402

CLASSES = ("gemm", "attention", "fsmn", "layernorm", "predictor", "elementwise/other")


def torch_class(op: str) -> str:
    if re.search(r"linear|addmm|^aten::mm$|out_proj", op):
        return "gemm"
    if re.search(r"scaled_dot_product|softmax|bmm|baddbmm", op):
        return "attention"
    if "fsmn" in op:
        return "fsmn"
    if "layer_norm" in op:
        return "layernorm"
    if re.search(r"convolution|cif|sigmoid", op):
        return "predictor"
    return "elementwise/other"


def ort_class(node: str, op: str) -> str:
    if "predictor" in node:
        return "predictor"
    if op in ("LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization") or re.search(r"/norm\w*/", node):
        return "layernorm"
    if "fsmn" in node:
        return "fsmn"
    if op == "Softmax" or re.search(r"(self_attn|src_attn)/MatMul(_1)?$", node.removesuffix("_kernel_time")):
        return "attention"
    if op in ("MatMul", "FusedMatMul", "Gemm", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"):
        return "gemm"
    return "elementwise/other"


def median_ms(fn, calls: int) -> tuple[float, object]:
    """(median wall ms of `calls` calls, the last result)."""
    runs = [timed(fn) for _ in range(calls)]
    return 1e3 * statistics.median(r[1] for r in runs), runs[-1][0]


def side_ours(a) -> dict:
    import numpy as np
    import soundfile as sf
    import torch
    from torch.profiler import ProfilerActivity, profile

    import paraformer_ext

    torch.set_num_threads(a.threads)
    asr = paraformer_ext.load(a.model, device="cpu")
    x, _ = sf.read(a.wav, dtype="float32")
    wave = torch.from_numpy(np.ascontiguousarray(x))[None]
    lens = torch.tensor([wave.shape[1]])
    pipe = asr.pipeline
    with torch.inference_mode():
        for _ in range(2):
            asr.transcribe([x], segmenter="none")
        total, _ = median_ms(lambda: asr.transcribe([x], segmenter="none"), a.calls)
        front, (feats, flens) = median_ms(lambda: pipe.features(wave, lens), a.calls)
        net, _ = median_ms(lambda: pipe.model.greedy(feats, flens), a.calls)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(a.calls):
                pipe.model.greedy(feats, flens)
    per_op: dict[str, float] = {}
    for e in prof.key_averages():
        per_op[e.key] = per_op.get(e.key, 0.0) + e.self_cpu_time_total
    return {"total_ms": total, "frontend_ms": front, "network_ms": net, "per_op_us": per_op,
            "classes_us": _classes(per_op.items(), torch_class), "cold_gemm": cold_gemm_rates(a.threads)}


def cold_gemm_rates(threads: int, M: int = 93, K: int = 512, N: int = 2048, layers: int = 60) -> dict:
    """GFLOP/s of torch's fp32 GEMMs when the weights are not in cache, as in a batch-1 call of a large model:
    `layers` different N×K weights (4 MB each here) used in turn, M rows; medians of 7 passes."""
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(M, K, generator=g)
    ws = [torch.randn(N, K, generator=g) for _ in range(layers)]
    bs = [torch.randn(N, generator=g) for _ in range(layers)]
    wts = [w.t().contiguous() for w in ws]
    onednn = [torch.ops.mkldnn._reorder_linear_weight(w, M) for w in ws]
    mkl = [torch.ops.mkl._mkl_reorder_linear_weight(w, M) for w in ws]
    fns = {"F.linear": lambda: [torch.nn.functional.linear(x, w, b) for w, b in zip(ws, bs)],
           "addmm": lambda: [torch.addmm(b, x, w) for w, b in zip(wts, bs)],
           "oneDNN prepacked": lambda: [torch.ops.mkldnn._linear_pointwise(x, p, b, "none", [], "")
                                        for p, b in zip(onednn, bs)],
           "MKL packed sgemm": lambda: [torch.ops.mkl._mkl_linear(x, p, w, b, M) for p, w, b in zip(mkl, ws, bs)]}
    flop = 2.0 * M * K * N * layers
    out = {}
    for name, fn in fns.items():
        ms, _ = median_ms(fn, 7)
        out[name] = round(flop / ms / 1e6, 1)
    return {"shape": [M, K, N], "layers": layers, "gflops": out}


def side_ort(a) -> dict:
    import numpy as np
    import onnxruntime as ort
    import soundfile as sf
    from funasr_onnx import Paraformer

    m = Paraformer(str(a.model), batch_size=1, quantize=False, intra_op_num_threads=a.threads)
    x, _ = sf.read(a.wav, dtype="float32")
    for _ in range(2):
        m(x)
    total, _ = median_ms(lambda: m(x), a.calls)
    front, (feats, flens) = median_ms(lambda: m.extract_feat([x]), a.calls)
    net, _ = median_ms(lambda: m.infer(feats, flens), a.calls)
    so = ort.SessionOptions()  # funasr_onnx's own session options, plus the profiler
    so.intra_op_num_threads = a.threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(a.tmp) / "ort_profile")
    sess = ort.InferenceSession(str(Path(a.model) / "model.onnx"), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    feed = dict(zip(names, [feats.astype(np.float32), flens.astype(np.int32)]))
    for _ in range(2):
        sess.run(None, feed)
    for _ in range(a.calls):
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_node: dict[tuple, float] = {}
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    first_timed = sorted(e["ts"] for e in runs)[2] if len(runs) > 2 else 0  # skip the two warm-ups
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first_timed:
            key = (e["name"], e.get("args", {}).get("op_name", ""))
            per_node[key] = per_node.get(key, 0.0) + e["dur"]
    per_op: dict[str, float] = {}
    for (_, op), us in per_node.items():
        per_op[op] = per_op.get(op, 0.0) + us
    classes = _classes(((n, op, us) for (n, op), us in per_node.items()), ort_class, ort=True)
    return {"total_ms": total, "frontend_ms": front, "network_ms": net, "per_op_us": per_op, "classes_us": classes,
            "onnxruntime": ort.__version__}


def _classes(items, classify, ort: bool = False) -> dict[str, float]:
    out = {c: 0.0 for c in CLASSES}
    for it in items:
        if ort:
            node, op, us = it
            out[classify(node, op)] += us
        else:
            op, us = it
            out[classify(op)] += us
    return out


def summarize(side: dict) -> dict:
    """The call's milliseconds: frontend, each op class (its share of the profiled network time times the median
    network time), and the rest of the call."""
    tot = sum(side["classes_us"].values()) or 1.0
    ms = {"frontend": side["frontend_ms"]}
    ms.update({c: side["network_ms"] * side["classes_us"][c] / tot for c in CLASSES})
    ms["python, decoding to text"] = max(0.0, side["total_ms"] - side["frontend_ms"] - side["network_ms"])
    return {k: round(v, 2) for k, v in ms.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wav", default=str(REPO.parent / "shared" / "audio" / "asr_example.wav"))
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "cpu_profile.json")
    ap.add_argument("--anchors-python", type=Path, default=ANCHORS_PYTHON)
    ap.add_argument("--side", choices=("both", "ours", "ort"), default="both")
    ap.add_argument("--tmp", default="/tmp")
    a = ap.parse_args(argv)
    if a.side != "both":
        print("RESULT " + json.dumps(side_ours(a) if a.side == "ours" else side_ort(a)), flush=True)
        return 0
    for p in (a.model / "model.pt", a.model / "model.onnx", a.anchors_python):
        if not p.exists():
            ap.error(f"{p} is missing: run `bash benchmarks/anchors/setup.sh` first")
    import soundfile as sf

    audio_s = sf.info(a.wav).duration
    common = ["--wav", a.wav, "--model", str(a.model), "--threads", str(a.threads), "--calls", str(a.calls)]
    sides = {}
    for name, py in (("ours fp32", sys.executable), ("ORT fp32", str(a.anchors_python))):
        side = "ours" if py == sys.executable else "ort"
        out = subprocess.run([py, __file__, "--side", side, *common], capture_output=True, text=True)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if out.returncode or line is None:
            raise SystemExit(f"{name} side failed:\n{out.stderr[-3000:]}")
        sides[name] = json.loads(line[len("RESULT "):])
    rows = {name: summarize(s) for name, s in sides.items()}
    keys = list(next(iter(rows.values())))
    table = markdown_table(
        [f"ms per call ({Path(a.wav).name}, {audio_s:.1f} s, batch 1, {a.threads} threads)", *rows],
        [[k, *(f"{rows[n][k]:.1f}" for n in rows)] for k in keys]
        + [["**call (median)**", *(f"**{sides[n]['total_ms']:.1f}**" for n in rows)]])
    report = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "wav": a.wav, "audio_s": audio_s,
              "threads": a.threads, "calls": a.calls, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "ms": rows, "sides": sides, "table": table}
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=1) + "\n")
    print(table)
    print(f"torch fp32 GEMMs on cold weights: {sides['ours fp32']['cold_gemm']}")
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
