"""One system of cpu_vs_onnx.py in its own process (started by it; see protocol.py for the line protocol).

    python worker.py --system SYSTEM --model DIR --threads N --items ITEMS.json     # a recognizer
    python worker.py --gemm torch|ort --threads N --shapes SHAPES.json             # GEMM rates, one shot

Systems: ours-fp32 (paraformer_ext, compiled kernels), ours-ref (kernels=False, the plain PyTorch reference),
ours-int8 (quantize="int8"), ours-bf16 (dtype bfloat16) with the project's python; ort-fp32 and ort-int8
(funasr_onnx.Paraformer on model.onnx / model_quant.onnx, FunASR's own CPU deployment) with the anchors venv's.
ITEMS.json: {item name: [wav paths]}: one call transcribes the item's wavs as one batch (float32 arrays =
int16 / 32768, read once at start, as soundfile and librosa both give them), text included. The ORT side runs
what funasr_onnx.Paraformer.__call__ runs on arrays (its frontend, session, argmax decoding, sentence
post-processing), keeping the scores so the token ids can be compared after the timer stops.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import memory, proc_status_mb, reset_peak_rss, serve, timed  # noqa: E402

OURS = {  # system: load() arguments
    "ours-fp32": dict(kernels=True, dtype="float32"),
    "ours-ref": dict(kernels=False, dtype="float32"),
    "ours-int8": dict(kernels=True, dtype="float32", quantize="int8"),
    "ours-bf16": dict(kernels=True, dtype="bfloat16"),
}
ORT = {"ort-fp32": False, "ort-int8": True}  # system: funasr_onnx's quantize (model_quant.onnx)
SYSTEMS = list(OURS) + list(ORT)
PRECISION = {"ours-fp32": "fp32", "ours-ref": "fp32", "ours-int8": "int8", "ours-bf16": "bf16", "ort-fp32": "fp32", "ort-int8": "int8"}


def read_wav(path: str):
    import numpy as np
    import soundfile as sf

    x, sr = sf.read(path, dtype="float32", always_2d=True)
    if sr != 16000:
        raise SystemExit(f"{path}: {sr} Hz, the benchmark's wavs are 16 kHz")
    return np.ascontiguousarray(x[:, 0])


class Ours:
    def __init__(self, a):
        import torch

        import paraformer_ext

        torch.set_num_threads(a.threads)
        self.torch = torch
        kw = dict(OURS[a.system])
        self.asr = paraformer_ext.load(a.model, device="cpu", dtype=getattr(torch, kw.pop("dtype")), **kw)
        torch.set_num_threads(a.threads)
        self.threads_used = torch.get_num_threads()

    def call(self, waves):
        with self.torch.inference_mode():
            res = self.asr.transcribe(waves, batch_size=len(waves), segmenter="none")
        return res

    @staticmethod
    def ids(res):
        return [r["token_ids"] for r in res]

    def flops(self, items: dict, ids: dict) -> dict:
        """Model FLOPs of each item (benchmarks/e2e.py's count from the config's geometry) with our fp32 tokens."""
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from e2e import model_flops

        cfg, fr = self.asr.model.cfg, self.asr.frontend.cfg
        out = {}
        for name, waves in items.items():
            tot = {"encoder": 0, "predictor": 0, "decoder": 0, "total": 0}
            for w, tok in zip(waves, ids[name]):
                for k, v in model_flops(cfg, fr.feature_frames(w.size), len(tok)).items():
                    tot[k] += v
            out[name] = tot
        return out


class Onnx:
    def __init__(self, a):
        from funasr_onnx import Paraformer

        self.m = Paraformer(a.model, batch_size=64, quantize=ORT[a.system], intra_op_num_threads=a.threads)
        from funasr_onnx.utils.postprocess_utils import sentence_postprocess

        self.post = sentence_postprocess

    def call(self, waves):
        """Paraformer.__call__ on arrays (its load_data takes one array or a list of paths, not a list of arrays)."""
        m = self.m
        feats, feats_len = m.extract_feat(list(waves))
        am_scores, token_nums = m.infer(feats, feats_len)[:2]
        texts = [self.post(toks) for toks in m.decode(am_scores, token_nums)]
        return am_scores, token_nums, texts

    def ids(self, res):
        """decode_one's ids: argmax, without blank (0) and eos (2), cut at the predicted token count − predictor_bias."""
        am_scores, token_nums, _ = res
        out = []
        for sc, n in zip(am_scores, token_nums):
            ids = [int(i) for i in sc.argmax(axis=-1) if i not in (0, 2)]
            out.append(ids[: int(n) - self.m.pred_bias])
        return out


def recognizer_main(a) -> None:
    import numpy as np

    t0 = time.perf_counter()
    rss0 = proc_status_mb("VmRSS")
    sysobj = Ours(a) if a.system in OURS else Onnx(a)
    load_s = time.perf_counter() - t0
    spec = json.loads(Path(a.items).read_text())
    items = {name: [read_wav(p) for p in paths] for name, paths in spec.items()}
    rss_loaded = proc_status_mb("VmRSS")
    # warm-up: the largest item once (allocators, oneDNN / ORT kernel choices), then the peak restarts
    t = time.perf_counter()
    big = max(items, key=lambda k: sum(w.size for w in items[k]))
    sysobj.call(items[big])
    warm_s = time.perf_counter() - t
    setup_peak = proc_status_mb("VmHWM")  # loading and the warm-up; the timed calls' own peak is measured apart
    hwm_reset = reset_peak_rss()
    walls: dict[str, list[float]] = {k: [] for k in items}
    cpus: dict[str, list[float]] = {k: [] for k in items}
    ids: dict[str, list] = {}

    def call(cmd):
        name = cmd["item"]
        res, wall, cpu = timed(lambda: sysobj.call(items[name]))
        walls[name].append(wall)
        cpus[name].append(cpu)
        if name not in ids:
            ids[name] = sysobj.ids(res)
        return {"wall_s": wall, "cpu_s": cpu}

    def flops(cmd):
        return sysobj.flops(items, ids)

    def finish(cmd):
        return {"walls_s": walls, "cpus_s": cpus, "token_ids": ids, "hwm_reset": hwm_reset,
                "wall_s": {k: statistics.median(v) for k, v in walls.items() if v}}

    ready = {"system": a.system, "threads": a.threads, "load_s": load_s, "warmup_s": warm_s, "rss_start_mb": rss0,
             "rss_loaded_mb": rss_loaded, "setup_peak_rss_mb": setup_peak, "pid": os.getpid(),
             "audio_s": {k: float(sum(w.size for w in v)) / 16000 for k, v in items.items()},
             "frames": {k: [int(w.size) for w in v] for k, v in items.items()}}
    if a.system in ORT:
        import onnxruntime

        ready["onnxruntime"] = onnxruntime.__version__
        ready["intra_op_num_threads"] = sysobj.m.ort_infer.session.get_session_options().intra_op_num_threads
    else:
        ready["torch_threads"] = sysobj.threads_used
    del np
    serve(ready, {"call": call, "flops": flops, "finish": finish})


# --- GEMM rates ----------------------------------------------------------------------------------------------


def _rate(fn, flop: float, min_reps: int = 3, budget_s: float = 1.0) -> float:
    """Median rate over at least min_reps timed calls after a warm-up (2 when a call takes over 0.5 s)."""
    t = time.perf_counter()
    fn()
    if time.perf_counter() - t > 0.5:
        min_reps = 2
    times = []
    end = time.perf_counter() + budget_s
    while len(times) < min_reps or (time.perf_counter() < end and len(times) < 20):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return flop / statistics.median(times) / 1e9


def gemm_torch(shapes, threads: int) -> dict:
    """GFLOP/s per (precision, kernel, M, K, N) with torch: fp32 x @ Wᵀ, F.linear and oneDNN's linear (plain and
    prepacked weight); bf16 the same; int8 torch._int_mm (int8 × int8 → int32, the GEMM alone) and FBGEMM's
    dynamic quantized linear (torch.ops.quantized.linear_dynamic: activation quantization + VNNI/AVX2 GEMM +
    dequantization, what ORT's dynamic quantization does)."""
    import warnings

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    out = []
    bf16_native = bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    for M, K, N in shapes:
        flop = 2.0 * M * K * N
        g = torch.Generator().manual_seed(M * 7 + K * 3 + N)
        x = torch.randn(M, K, generator=g)
        w = torch.randn(N, K, generator=g) / K**0.5
        b = torch.randn(N, generator=g) * 0.1
        cands = {("fp32", "matmul"): lambda: x @ w.t(), ("fp32", "F.linear"): lambda: F.linear(x, w, b)}
        try:
            pw = torch.ops.mkldnn._reorder_linear_weight(w, None)
            cands[("fp32", "onednn")] = lambda: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
            cands[("fp32", "onednn-packed")] = lambda: torch.ops.mkldnn._linear_pointwise(x, pw, b, "none", [], "")
        except (AttributeError, RuntimeError):
            pass
        xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
        cands[("bf16", "matmul")] = lambda: xb @ wb.t()
        cands[("bf16", "F.linear")] = lambda: F.linear(xb, wb, bb)
        if bf16_native:
            cands[("bf16", "onednn")] = lambda: torch.ops.mkldnn._linear_pointwise(xb, wb, bb, "none", [], "")
        xq = torch.randint(-127, 128, (M, K), dtype=torch.int8, generator=g)
        wq = torch.randint(-127, 128, (K, N), dtype=torch.int8, generator=g)
        cands[("int8", "_int_mm")] = lambda: torch._int_mm(xq, wq)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.quantized.engine = "fbgemm"
            sc = (w.abs().amax(1) / 127).double().clamp_min(1e-8)
            wqt = torch.quantize_per_channel(w, sc, torch.zeros(N, dtype=torch.long), 0, torch.qint8)
            packed = torch.ops.quantized.linear_prepack(wqt, b)
        cands[("int8", "fbgemm-dynamic")] = lambda: torch.ops.quantized.linear_dynamic(x, packed)
        with torch.inference_mode():
            for (prec, kernel), fn in cands.items():
                try:
                    out.append({"precision": prec, "lib": "torch", "kernel": kernel, "M": M, "K": K, "N": N, "gflops": _rate(fn, flop)})
                except (RuntimeError, NotImplementedError) as e:
                    out.append({"precision": prec, "lib": "torch", "kernel": kernel, "M": M, "K": K, "N": N, "error": str(e)[:160]})
    return {"threads": threads, "torch": torch.__version__, "bf16_native": bf16_native, "rates": out}


def gemm_ort(shapes, threads: int) -> dict:
    """GFLOP/s of ONNX Runtime's own kernels (MLAS) on a one-MatMul graph per shape: fp32, and the same graph
    through onnxruntime.quantization.quantize_dynamic with FunASR's export settings (uint8 weights per channel),
    which ORT runs as DynamicQuantizeMatMul (activation quantization included)."""
    import tempfile

    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = []
    rng = np.random.default_rng(0)
    opt = ort.SessionOptions()
    opt.intra_op_num_threads = threads
    opt.log_severity_level = 4
    opt.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with tempfile.TemporaryDirectory() as d:
        for K, N in sorted({(k, n) for _, k, n in shapes}):
            w = (rng.standard_normal((K, N)) / K**0.5).astype(np.float32)
            g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", K])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", N])],
                                  [numpy_helper.from_array(w, "w")])
            fp = os.path.join(d, f"mm_{K}_{N}.onnx")
            qp = fp.replace(".onnx", "_quant.onnx")
            onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)]), fp)
            quantize_dynamic(model_input=fp, model_output=qp, op_types_to_quantize=["MatMul"], per_channel=True,
                             reduce_range=False, weight_type=QuantType.QUInt8)
            sessions = {("fp32", "MatMul"): ort.InferenceSession(fp, opt, providers=["CPUExecutionProvider"]),
                        ("int8", "DynamicQuantizeMatMul"): ort.InferenceSession(qp, opt, providers=["CPUExecutionProvider"])}
            for M in sorted({m for m, k, n in shapes if (k, n) == (K, N)}):
                x = rng.standard_normal((M, K)).astype(np.float32)
                for (prec, kernel), s in sessions.items():
                    out.append({"precision": prec, "lib": "onnxruntime", "kernel": kernel, "M": M, "K": K, "N": N,
                                "gflops": _rate(lambda: s.run(None, {"x": x}), 2.0 * M * K * N)})
    return {"threads": threads, "onnxruntime": ort.__version__, "rates": out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--system", choices=SYSTEMS)
    ap.add_argument("--model")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--items")
    ap.add_argument("--gemm", choices=["torch", "ort"])
    ap.add_argument("--shapes", help="JSON list of [M, K, N]")
    a = ap.parse_args()
    if a.gemm:
        shapes = [tuple(s) for s in json.loads(a.shapes)]
        res = gemm_torch(shapes, a.threads) if a.gemm == "torch" else gemm_ort(shapes, a.threads)
        res.update(memory())
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    recognizer_main(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
