"""Can the trainer overfit a handful of utterances? A tiny random model (synthetic.make_random_model "tiny"),
N synthetic_speech clips each paired with a short random character string, trained and validated on the same
clips; prints the validation loss and CER after every epoch and the wall time.

    python benchmarks/overfit_trainer.py --utts 6 --epochs 60 --lr 5e-3 --workdir /tmp/overfit
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from paraformer_ext.synthetic import make_random_model, synthetic_speech
from paraformer_ext.training.trainer import TrainConfig, Trainer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/overfit")
    ap.add_argument("--utts", type=int, default=6)
    ap.add_argument("--chars", type=int, default=20, help="size of the character set the targets draw from")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--max-batch-frames", type=int, default=200)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--minutes", type=float, default=2.0, help="stop after this much wall time")
    a = ap.parse_args()
    torch.set_num_threads(2)
    d = Path(a.workdir)
    d.mkdir(parents=True, exist_ok=True)
    model = make_random_model(d / "init", a.preset, seed=0)
    rng = np.random.default_rng(0)
    chars = [chr(0x4E00 + i) for i in range(a.chars)]
    with open(d / "train.jsonl", "w", encoding="utf-8") as f:
        for i in range(a.utts):
            wav = d / f"utt{i}.wav"
            sf.write(wav, synthetic_speech(1.5 + 0.25 * (i % 3), 100 + i), 16000, subtype="PCM_16")
            f.write(json.dumps({"key": f"utt{i}", "source": str(wav), "target": "".join(rng.choice(chars, 4 + i % 3))},
                               ensure_ascii=False) + "\n")
    cfg = TrainConfig(train_data=str(d / "train.jsonl"), valid_data=str(d / "train.jsonl"), output_dir=str(d / "out"),
                      init=str(model), epochs=a.epochs, max_batch_frames=a.max_batch_frames, lr=a.lr, warmup=a.warmup,
                      progress=False, keep_best=1)
    t = Trainer(cfg, log=lambda s: None)
    t0 = time.perf_counter()
    steps = []

    def hook(tr, out):
        steps.append(time.perf_counter())
        if time.perf_counter() - t0 > a.minutes * 60:
            raise KeyboardInterrupt

    t.hooks.append(hook)
    orig = t.validate

    def validate():
        loss, cer = orig()
        print(f"{time.perf_counter() - t0:6.1f} s  epoch {t.epoch + 1:3d}  step {t.step:4d}  valid loss {loss:7.3f}  "
              f"CER {cer:6.1%}", flush=True)
        return loss, cer

    t.validate = validate
    try:
        t.run()
    except KeyboardInterrupt:
        pass
    dt = np.diff(steps)
    print(f"{len(steps)} steps, median step {np.median(dt) * 1000:.0f} ms (incl. audio reading and features)")


if __name__ == "__main__":
    main()
