"""Shared fixtures: where the golden data lives, golden checkpoints built on demand, devices to test on."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    """The project's shared ground truth: $PARAFORMER_EXT_SHARED, else ../shared beside the repository."""
    env = os.environ.get("PARAFORMER_EXT_SHARED")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared", REPO / "shared"]:
        if (cand / "golden").is_dir():
            return cand
    return None


SHARED = shared_dir()
needs_shared = pytest.mark.skipif(SHARED is None, reason="../shared (golden data) not found; set PARAFORMER_EXT_SHARED")


def cache_dir() -> Path:
    d = Path(os.environ.get("PARAFORMER_EXT_CACHE", REPO / ".cache"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def golden_checkpoint(preset: str) -> Path:
    """Build (once) the random-weight FunASR checkpoint of a golden preset with the golden script."""
    if SHARED is None:
        pytest.skip("golden data not found")
    out = cache_dir() / "golden_ckpt" / preset
    if not (out / "model.pt").exists() or not (out / ".verified").exists():
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, str(SHARED / "golden" / "make_checkpoint.py"), "--preset", preset, str(out), "--verify"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (out / ".verified").write_text("ok\n")
    return out


def cuda_ok() -> bool:
    from paraformer_ext import has_cuda_kernels

    return torch.cuda.is_available() and has_cuda_kernels()


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param == "cuda" and not cuda_ok():
        pytest.skip("CUDA kernels not built")
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _no_tf32():
    # Parity needs true float32 matmuls on GPU (golden README: TF32 moves log-probs by more than 1e-4).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield


# --- FSMN-VAD (tests/test_vad*.py) ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def vad_model_dir() -> Path:
    """FunASR's fsmn-vad files (model.pt, config.yaml, am.mvn) as shipped in the package, hash-checked."""
    from paraformer_ext.vad.weights import bundled_model_dir

    return bundled_model_dir()


# --- streaming (tests/test_streaming*.py) ------------------------------------------------------------------------


def stream_checkpoint(frontend: str | None = None) -> Path:
    """The small golden checkpoint under the online config of ../shared/golden/stream (its README and
    stream.json's config_changes: ParaformerStreaming, SANMEncoderChunkOpt, ...). frontend: also replace the
    frontend class (e.g. "WavFrontendOnline"); None keeps the golden's."""
    import json

    from paraformer_ext.synthetic import online_variant

    small = golden_checkpoint("small")
    changes = json.loads((SHARED / "golden" / "stream" / "stream.json").read_text(encoding="utf-8"))["config_changes"]
    out = cache_dir() / "golden_ckpt" / f"small_stream{'_' + frontend if frontend else ''}"
    if not (out / ".done").exists():
        online_variant(small, out, changes, frontend)
        (out / ".done").write_text("ok\n")
    return out


# --- training (tests/test_training*.py) ---------------------------------------------------------------------------


def assert_batch_is_sum_of_parts(out: dict, grads: dict, parts: list) -> None:
    """A padded batch's compute_loss result (out, grads) equals its utterances' batch-1 results (parts: (out, grads)
    each) weighted by their token counts: the loss to 1e-5 relative, every gradient to 1e-4 of its largest entry."""
    W = out["weight"]
    assert W == sum(p[0]["weight"] for p in parts)
    for k in ("loss", "loss_att", "loss_pre"):
        combined = sum(float(p[0][k].detach()) * p[0]["weight"] for p in parts) / W
        assert abs(float(out[k].detach()) - combined) <= 1e-5 * abs(combined), k
    for name, g in grads.items():
        combined = sum(p[1][name].double() * p[0]["weight"] for p in parts) / W
        assert (g.double() - combined).abs().max() <= 1e-4 * combined.abs().max().clamp_min(1e-12), name
