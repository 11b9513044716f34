"""Batch-1 calls on utterances of lengths never seen before vs the same utterances again (oneDNN builds a
primitive for every new GEMM shape), with the row bucketing of ops/linear.py on and off.

    .venv/bin/python benchmarks/bench_new_lengths.py [--model DIR] [--n 40] [--threads 2] [--out FILE.json]

DIR: a FunASR model directory; default the shipped model, else a random-weight `syn-b` model (the shipped
model's geometry). The utterances are synthetic speech of 3-8 s, every one a different number of samples. Each
setting runs in a fresh process (oneDNN's primitive cache is per process): round 1 = every length new,
round 2 = the same utterances again (every shape cached).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO  # noqa: E402


def child(model: str, n: int, threads: int, bucket: bool) -> dict:
    import torch

    from paraformer_ext import load
    from paraformer_ext.ops import linear
    from paraformer_ext.synthetic import synthetic_speech

    torch.set_num_threads(threads)
    if not bucket:
        linear.ROW_BUCKET = 1
    rng = __import__("numpy").random.default_rng(0)
    waves = [torch.from_numpy(synthetic_speech(float(s), i)) for i, s in enumerate(rng.uniform(3, 8, n + 1))]
    asr = load(model)
    asr.transcribe(waves[-1])  # warm-up on a length not timed
    out = {}
    for rnd in ("new_lengths", "repeated"):
        t = time.perf_counter()
        for w in waves[:n]:
            asr.transcribe(w)
        out[rnd + "_ms_per_call"] = (time.perf_counter() - t) / n * 1000
    out["audio_s"] = sum(len(w) for w in waves[:n]) / 16000
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.model, a.n, a.threads, a.child == "on")))
        return
    tmp = None
    if a.model is None:
        from paraformer_ext.default_model import DEFAULT_DIR

        if (DEFAULT_DIR / "SHA256SUMS").is_file():
            a.model = str(DEFAULT_DIR)
        else:
            from paraformer_ext.synthetic import make_random_model

            tmp = tempfile.TemporaryDirectory()
            a.model = str(make_random_model(Path(tmp.name) / "syn-b", "syn-b", seed=0))
    res = {}
    for setting in ("on", "off"):
        r = subprocess.run([sys.executable, __file__, "--child", setting, "--model", a.model, "--n", str(a.n),
                            "--threads", str(a.threads)], capture_output=True, text=True, check=True)
        res["bucketing_" + setting] = json.loads(r.stdout.strip().splitlines()[-1])
        v = res["bucketing_" + setting]
        print(f"row bucketing {setting:3s}: new lengths {v['new_lengths_ms_per_call']:.1f} ms per call, repeated "
              f"{v['repeated_ms_per_call']:.1f} ms", flush=True)
    if a.out:
        import torch

        Path(a.out).write_text(json.dumps({"command": "benchmarks/bench_new_lengths.py " + " ".join(sys.argv[1:]),
                                           "model": a.model, "threads": a.threads, "n": a.n, "torch": torch.__version__,
                                           "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), **res},
                                          indent=1) + "\n")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
