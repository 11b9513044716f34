"""End-to-end benchmark, small form (pytest-benchmark): audio arrays → text with the `small` preset on a short
workload built like benchmarks/e2e.py's (real speech tiled and cut, seeded), per device. The full comparison,
with the `large` preset, peak memory, FLOP rates and transcript equality, is benchmarks/e2e.py.

    .venv/bin/python -m pytest benchmarks/bench_e2e.py --benchmark-only --benchmark-json=out.json
    .venv/bin/python benchmarks/summarize.py out.json

CPU runs the one-by-one fp32 reference and the fp32 engine on 6 utterances of 2-6 s; CUDA runs those and the
fp16/bf16 engine on 64 utterances of 2-20 s. extra_info: audio seconds, ×real time (from the median), and
the number of transcripts (token ids) that differ from the reference's.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import e2e
from common import run_timed
from paraformer_ext import has_cuda_kernels, has_kernels

pytestmark = pytest.mark.skipif(not has_kernels(), reason="compiled extension not built")

DEVICES = ["cpu", "cuda"]
SYSTEMS = ["ref-fp32-1by1", "engine-fp32", "engine-fp16", "engine-bf16"]
CPU_SYSTEMS = {"ref-fp32-1by1", "engine-fp32"}

_MODEL: dict = {}
_WORK: dict = {}
_REF_IDS: dict = {}


def _model_dir() -> str:
    if "small" not in _MODEL:
        _MODEL["small"] = e2e.model_dir_for("small")
    return _MODEL["small"]


def _workload(device: str) -> list:
    if device not in _WORK:
        args = SimpleNamespace(seed=0, n=6 if device == "cpu" else 64, total_s=None, min_s=2.0,
                               max_s=6.0 if device == "cpu" else 20.0, inputs="arrays")
        waves, desc, _ = e2e.build_workload(args)
        _WORK[device] = (waves, desc)
    return _WORK[device]


def _transcribe(asr, waves, batched: bool) -> list:
    if batched:
        return [r["token_ids"] for r in asr.transcribe(waves, segmenter="none")]
    return [asr.transcribe(w, segmenter="none")[0]["token_ids"] for w in waves]


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("device", DEVICES)
def test_e2e(benchmark, device, system):
    if device == "cuda" and not (torch.cuda.is_available() and has_cuda_kernels()):
        pytest.skip("CUDA device or CUDA kernels not available")
    if device == "cpu" and system not in CPU_SYSTEMS:
        pytest.skip("CPU: the fp32 systems only (benchmarks/e2e.py runs the rest)")
    import paraformer_ext

    kernels, dtype, batched, _ = e2e.SYSTEMS[system]
    waves, desc = _workload(device)
    asr = paraformer_ext.load(_model_dir(), device=device, dtype=dtype, kernels=kernels)
    benchmark.group = f"e2e {device} small {desc['utterances']} utts {desc['audio_s']:.0f} s"
    with torch.inference_mode():
        ids = _transcribe(asr, waves, batched)  # warm-up
        if system == e2e.REFERENCE:
            _REF_IDS[device] = ids
        run_timed(benchmark, lambda: _transcribe(asr, waves, batched), device, rounds=3 if device == "cpu" else 5)
    med = benchmark.stats.stats.median
    ref = _REF_IDS.get(device)
    benchmark.extra_info.update(
        baseline=system == e2e.REFERENCE, system=system, dtype=dtype, audio_s=desc["audio_s"], utterances=desc["utterances"],
        x_real_time=desc["audio_s"] / med, mismatches_vs_ref=None if ref is None else sum(a != b for a, b in zip(ref, ids)),
    )
