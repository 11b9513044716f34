"""Frontend throughput: a batch of 8 × 10 s utterances through WavFrontend (fbank → LFR 7/6 → CMVN).

    .venv/bin/python -m pytest benchmarks/bench_frontend.py --benchmark-only

Reports seconds of audio per second of wall time in `extra_info["audio_s_per_s"]` (also printed). The audio
is the shared wavs (../shared/audio, or $PARAFORMER_EXT_SHARED) tiled to 10 s, else low-level noise.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from paraformer_ext.frontend import FrontendConfig, WavFrontend, apply_lfr, kaldi_fbank

B, SECONDS, FS = 8, 10.0, 16000
REPO = Path(__file__).resolve().parents[1]


def _audio_batch() -> torch.Tensor:
    env = os.environ.get("PARAFORMER_EXT_SHARED")
    shared = next((p for p in ([Path(env)] if env else []) + [REPO.parent / "shared"] if (p / "audio").is_dir()),
                  None)
    n = int(SECONDS * FS)
    if shared is None:
        g = torch.Generator().manual_seed(0)
        return (torch.rand(B, n, generator=g) - 0.5) * 0.1
    import soundfile as sf

    wavs = [torch.from_numpy(sf.read(str(p), dtype="float32")[0]) for p in sorted((shared / "audio").glob("*.wav"))]
    speech = torch.cat(wavs)
    reps = -(-(n + B * 7919) // len(speech))
    speech = speech.repeat(reps)
    return torch.stack([speech[i * 7919 : i * 7919 + n] for i in range(B)])  # 8 different 10 s excerpts


def _cfg_cmvn():
    cfg = FrontendConfig(lfr_m=7, lfr_n=6)
    cmvn = torch.stack([torch.full((560,), -10.0), torch.full((560,), 0.25)])
    return cfg, cmvn


def _report(benchmark, label):
    mean = benchmark.stats.stats.mean
    rate = B * SECONDS / mean
    benchmark.extra_info.update(audio_seconds=B * SECONDS, audio_s_per_s=round(rate, 1),
                                threads=torch.get_num_threads())
    print(f"\n{label}: {B} x {SECONDS:.0f} s in {mean * 1e3:.1f} ms -> {rate:,.0f} s of audio per second "
          f"({torch.get_num_threads()} threads)")


@pytest.fixture(params=[1, 0], ids=["1thread", "all-threads"])
def threads(request):
    """CPU threads for the timed call (0 = torch's default); on a shared machine one thread is the stable number."""
    before = torch.get_num_threads()
    if request.param:
        torch.set_num_threads(request.param)
    yield torch.get_num_threads()
    torch.set_num_threads(before)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_wav_frontend_throughput(benchmark, device, threads):
    cfg, cmvn = _cfg_cmvn()
    x = _audio_batch().to(device)
    lens = torch.full((B,), x.size(1), dtype=torch.int64)
    front = WavFrontend(cfg, cmvn).to(device)

    def run():
        out = front(x, lens)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    feats, flens = benchmark(run)
    assert feats.shape == (B, 167, 560) and flens.tolist() == [167] * B
    _report(benchmark, f"WavFrontend on {device}")


def test_fbank_only_throughput_cpu(benchmark, threads):
    cfg, _ = _cfg_cmvn()
    x = _audio_batch()
    fb, n = benchmark(kaldi_fbank, x, None, cfg)
    assert fb.shape == (B, 998, 80)
    _report(benchmark, "kaldi_fbank on cpu")


def test_lfr_only_throughput_cpu(benchmark, threads):
    fb = torch.randn(B, 998, 80)
    lens = torch.full((B,), 998)
    out, _ = benchmark(apply_lfr, fb, lens, 7, 6)
    assert out.shape == (B, 167, 560)
    _report(benchmark, "apply_lfr (7, 6) on cpu")
