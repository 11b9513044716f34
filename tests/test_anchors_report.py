"""benchmarks/anchors/cpu_vs_onnx.py's arithmetic on made-up measurements: GEMM ceilings, RTF, speed-up over
ONNX Runtime at the same precision, share of the ceiling, token agreement, peak RSS (no model, no ONNX Runtime)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "anchors"))
import cpu_vs_onnx as cv  # noqa: E402


def test_bucket():
    assert [cv.bucket(m) for m in (1, 64, 90, 91, 128, 500, 1000, 4000)] == [64, 64, 64, 128, 128, 512, 1024, 4096]


def _rates(prec, M, gflops, lib="torch", kernel="k"):
    return [{"precision": prec, "lib": lib, "kernel": kernel, "M": M, "K": k, "N": n, "gflops": gflops} for k, n in cv.ENCODER_GEMMS]


def test_ceiling_is_flops_over_time_of_the_best_kernel_per_shape():
    slow = _rates("fp32", 128, 50.0)
    fast = _rates("fp32", 128, 100.0, "onnxruntime", "MatMul")
    fast[0]["gflops"] = 10.0  # ORT loses one shape: the best per shape is torch's 50 there
    c = cv.ceilings({"torch": {"rates": slow}, "ort": {"rates": fast}})["fp32"][128]
    flops = [2.0 * 128 * k * n for k, n in cv.ENCODER_GEMMS]
    best = [50.0, 100.0, 100.0, 100.0]
    assert c["gflops"] == pytest.approx(sum(flops) / sum(f / b for f, b in zip(flops, best)))
    assert c["best"]["512x1536"].startswith("torch")


def test_analyse():
    items = {"b1 a": {"batch": 1, "audio_s": 10.0, "M": 160}}
    gemm = {"torch": {"rates": _rates("fp32", 128, 100.0) + _rates("int8", 128, 200.0) + _rates("bf16", 128, 50.0)}}
    row = lambda wall, ids, peak: {"ready": {"setup_peak_rss_mb": peak, "rss_loaded_mb": 1.0},  # noqa: E731
                                   "calls": {"b1 a": [{"wall_s": w, "cpu_s": w} for w in wall]},
                                   "token_ids": {"b1 a": [ids]}, "peak_rss_mb": peak / 2, "hwm_reset": True}
    rows = {"ours-fp32": row([0.5, 0.4, 0.6], [1, 2, 3, 4], 1000.0), "ort-fp32": row([1.0], [1, 2, 3, 5], 800.0),
            "ours-int8": row([0.25], [1, 2, 3, 4], 600.0), "ort-int8": row([0.5], [1, 2, 9, 9], 400.0),
            "ours-bf16": row([1.0], [1, 2, 3, 4], 500.0)}
    run = cv.analyse({"threads": 2, "gemm": gemm, "ceilings": cv.ceilings(gemm), "systems": rows,
                      "flops": {"b1 a": {"encoder": 50e9, "predictor": 1e9, "decoder": 9e9, "total": 60e9}}}, items)
    e = run["items"]["b1 a"]
    assert e["ours-fp32"]["wall_s"] == 0.5 and e["ours-fp32"]["rtf"] == pytest.approx(0.05)
    assert e["ours-fp32"]["speedup_vs_ort"] == pytest.approx(2.0)
    assert e["ours-int8"]["speedup_vs_ort"] == pytest.approx(2.0)
    assert e["ours-bf16"]["speedup_vs_ort"] == pytest.approx(0.5)  # bf16 is held against ORT's int8
    assert "speedup_vs_ort" not in e["ort-fp32"]
    assert e["ours-fp32"]["gflops"] == pytest.approx(120.0) and e["ours-fp32"]["frac_ceiling"] == pytest.approx(1.2)
    assert e["ort-int8"]["frac_ceiling"] == pytest.approx(0.6)
    s = run["summary"]
    assert s["ours-fp32"]["vs_fp32"]["token_agreement"] == 1.0
    assert s["ort-fp32"]["vs_fp32"]["token_agreement"] == pytest.approx(0.75)
    assert s["ort-int8"]["vs_fp32"]["mismatches"] == 1
    assert s["ours-fp32"]["peak_rss_mb"] == 1000.0 and s["ours-fp32"]["run_peak_rss_mb"] == 500.0
    assert s["ours-int8"]["speedup_vs_ort"] == pytest.approx(2.0)
    text = cv.tables({"runs": [run], "args": {"repeat": 3}, "env": {}})
    assert "| b1 a | 10.0 | 0.0500 (2.00x)" in text
    assert "b1 a 6.00 (5.00 + 0.100 + 0.90)" in text
