"""Training throughput on CPU: one process vs torchrun with 2 processes (gloo), 1 thread each.

    .venv/bin/python benchmarks/bench_ddp.py [--preset small] [--utts 96] [--out benchmarks/results/ddp_cpu.json]

Each run trains 2 epochs on the same synthetic utterances; the second epoch (features cached, no start-up) is
timed from the trainer's epoch lines, and the audio it trained on is counted from the batches each setup uses
(torchrun drops the batches that do not divide among the ranks).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from paraformer_ext.synthetic import make_random_model, synthetic_speech  # noqa: E402
from paraformer_ext.training.data import make_batches  # noqa: E402


def timed_epoch(cmd: list[str], env: dict) -> float:
    """Seconds between the trainer's "epoch 1:" and "epoch 2:" lines."""
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    marks, log = {}, []
    for line in p.stdout:
        log.append(line)
        for e in (1, 2):
            if f"epoch {e}:" in line and e not in marks:
                marks[e] = time.perf_counter()
    if p.wait() != 0 or len(marks) != 2:
        raise SystemExit("run failed:\n" + "".join(log[-30:]))
    return marks[2] - marks[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--utts", type=int, default=96)
    ap.add_argument("--max-batch-frames", type=int, default=600)
    ap.add_argument("--workdir", default=str(ROOT / ".cache" / "bench_ddp"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ddp_cpu.json"))
    a = ap.parse_args()
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = make_random_model(work / f"model_{a.preset}", a.preset, seed=0)
    rng = np.random.default_rng(0)
    lines, seconds = [], []
    for i in range(a.utts):
        p = work / f"u{i:03d}.wav"
        s = float(rng.uniform(2, 6))
        sf.write(p, synthetic_speech(s, 1000 + i), 16000, subtype="PCM_16")
        seconds.append(s)
        text = "".join(chr(0x4E00 + int(c)) for c in rng.integers(0, 2000, int(s * 3)))
        lines.append(json.dumps({"key": p.stem, "source": str(p), "target": text}, ensure_ascii=False))
    (work / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (work / "valid.jsonl").write_text(lines[0] + "\n", encoding="utf-8")
    frames = [int(s * 1000 / 60) for s in seconds]  # close to the trainer's count; used only for the drop share
    batches = make_batches(frames, a.max_batch_frames, 0, 1)
    per = len(batches) // 2
    kept = [i for b in batches[: 2 * per] for i in b]  # the same set of batches as ranks 0 and 1 use together
    args = ["train", "--init", str(model), "--train-data", str(work / "train.jsonl"), "--valid-data",
            str(work / "valid.jsonl"), "--epochs", "2", "--max-batch-frames", str(a.max_batch_frames),
            "--seed", "0", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    res = {}
    for name, cmd, audio in (
        ("1 process", [sys.executable, "-m", "paraformer_ext.cli", *args, "--output-dir", str(work / "one")],
         sum(seconds)),
        ("2 processes (torchrun, gloo)", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                          "--nproc_per_node=2", "-m", "paraformer_ext.cli", *args, "--output-dir",
                                          str(work / "two")], sum(seconds[i] for i in kept)),
    ):
        t = timed_epoch(cmd, env)
        res[name] = {"epoch_s": round(t, 2), "audio_s": round(audio, 1), "audio_s_per_s": round(audio / t, 1)}
        print(f"{name}: {audio:.0f} s of audio in {t:.1f} s = {audio / t:.1f} audio-s/s", flush=True)
    one, two = (res[k]["audio_s_per_s"] for k in res)
    out = {"preset": a.preset, "utterances": a.utts, "max_batch_frames": a.max_batch_frames, "threads_per_process": 1,
           "runs": res, "speedup_2_vs_1": round(two / one, 2), "machine": {"cpus": os.cpu_count(),
                                                                          "platform": platform.platform()},
           "command": "benchmarks/bench_ddp.py " + " ".join(sys.argv[1:])}
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"2 processes vs 1: {two / one:.2f}x; {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
