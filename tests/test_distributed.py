"""`torchrun ... paraformer-ext train` (training/distributed.py): two gloo processes on CPU train exactly like one
process whose batches are the union of theirs; a killed rank stops the run, and --resume continues it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from paraformer_ext.synthetic import make_random_model, synthetic_speech
from paraformer_ext.training.data import make_batches
from paraformer_ext.training.loss import compute_loss
from paraformer_ext.training.trainer import TrainConfig, Trainer

pytestmark = pytest.mark.slow
CJK = [chr(0x4E00 + i) for i in range(20)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model without dropout (so a step is deterministic) and 12 short synthetic utterances."""
    d = tmp_path_factory.mktemp("ddp")
    model = make_random_model(d / "init", "tiny", seed=0)
    cfg = yaml.safe_load((model / "config.yaml").read_text())
    for sec in ("encoder_conf", "decoder_conf"):
        for k in list(cfg[sec]):
            if "dropout" in k:
                cfg[sec][k] = 0.0
    (model / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    rng = np.random.default_rng(0)
    lines = []
    for i in range(12):
        wav = d / f"u{i}.wav"
        sf.write(wav, synthetic_speech(0.8 + 0.1 * (i % 5), 70 + i), 16000, subtype="PCM_16")
        lines.append({"key": f"u{i}", "source": str(wav), "target": "".join(rng.choice(CJK, size=2 + i % 4))})
    (d / "train.jsonl").write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    return d, model


def _args(d, model, out, **kw):
    opts = {"train-data": d / "train.jsonl", "valid-data": d / "train.jsonl", "output-dir": out, "init": model,
            "epochs": 1, "max-batch-frames": 40, "lr": 2e-3, "warmup": 2, "seed": 3, "sampling-ratio": 0.0, **kw}
    return [f"--{k}={v}" for k, v in opts.items()] + ["--quiet"]


def _torchrun(args, **popen):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "paraformer_ext.cli", "train", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def test_two_ranks_train_like_one_process_on_the_union(setup, tmp_path):
    d, model = setup
    p = _torchrun(_args(d, model, tmp_path / "ddp"))
    log, _ = p.communicate(timeout=600)
    assert p.returncode == 0, log
    ddp = torch.load(tmp_path / "ddp" / "checkpoints" / "epoch1.pt", map_location="cpu", weights_only=True)

    cfg = TrainConfig(train_data=str(d / "train.jsonl"), valid_data=str(d / "train.jsonl"),
                      output_dir=str(tmp_path / "one"), init=str(model), epochs=1, max_batch_frames=40, lr=2e-3,
                      warmup=2, seed=3, sampling_ratio=0.0, progress=False)
    t = Trainer(cfg, log=lambda s: None)
    batches = make_batches(t.train_frames, cfg.max_batch_frames, cfg.seed, 0)
    steps = len(batches) // 2
    assert steps >= 3 and len({len(b) for b in batches}) > 1  # several steps, ranks with different batch sizes
    t.model.train()
    for k in range(steps):  # rank 0 trains batches[0::2], rank 1 batches[1::2]: step k is their union
        utts = [t.train_utts[i] for i in batches[2 * k] + batches[2 * k + 1]]
        out = compute_loss(t.model, *t.features(utts), sampling_ratio=0.0, generator=t.generator)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(t.model.parameters(), cfg.clip)
        t.opt.step()
        t.opt.zero_grad(set_to_none=True)
        t.step += 1
        t._set_lr()
    one = t.model.state_dict()
    init = torch.load(model / "model.pt", weights_only=True)
    assert ddp.keys() == one.keys()
    bad, moved = [], 0
    for k in one:
        a, b = ddp[k], one[k]
        # a key bias adds q·b_k to every score of a row, which softmax ignores: its true gradient is 0 and the
        # computed one is rounding noise, which Adam scales up to ±lr steps; leave the key part out
        if k.endswith("linear_q_k_v.bias"):
            d = a.numel() // 3
            a, b = torch.cat([a[:d], a[2 * d:]]), torch.cat([b[:d], b[2 * d:]])
        elif k.endswith("linear_k_v.bias"):
            a, b = a[a.numel() // 2:], b[b.numel() // 2:]
        if not torch.allclose(a, b, rtol=1e-4, atol=2e-5):
            bad.append(f"{k}: max |diff| {float((a - b).abs().max()):.2e}")
        moved += not torch.equal(one[k], init[k])
    assert not bad, bad
    assert moved > len(one) // 2  # the comparison is between trained weights, not two copies of the init


def _rank_pids(parent: int) -> dict[int, int]:
    """RANK -> pid of torchrun's worker processes."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) != parent:
            continue
        for kv in env:
            if kv.startswith(b"RANK="):
                out[int(kv[5:])] = int(proc.name)
    return out


def test_a_killed_rank_stops_the_run_and_resume_finishes_it(setup, tmp_path):
    d, model = setup
    out = tmp_path / "run"
    args = _args(d, model, out, epochs=4, **{"save-every-min": 0})  # a checkpoint after every step
    p = _torchrun(args)
    last = out / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.is_file():
        assert p.poll() is None, p.communicate()[0]
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.05)
    ranks = _rank_pids(p.pid)
    assert set(ranks) == {0, 1}, ranks
    os.kill(ranks[1], signal.SIGKILL)
    log, _ = p.communicate(timeout=300)
    assert p.returncode != 0
    assert "exitcode" in log and "-9" in log, log  # torchrun names the killed worker
    step = torch.load(last, map_location="cpu", weights_only=False)["scheduler"]["step"]
    assert not (out / "model.pt").exists()

    p = _torchrun(args + ["--resume"])
    log, _ = p.communicate(timeout=600)
    assert p.returncode == 0, log
    assert f"resumed from {last}: step {step}" in log
    assert (out / "model.pt").is_file()
    final = torch.load(last, map_location="cpu", weights_only=False)
    assert final["position"]["epoch"] == 4 and final["world_size"] == 2 and len(final["rng"]["ranks"]) == 2


def test_resume_with_another_world_size_is_refused(setup, tmp_path):
    d, model = setup
    out = tmp_path / "one"
    cfg = TrainConfig(train_data=str(d / "train.jsonl"), valid_data=str(d / "train.jsonl"), output_dir=str(out),
                      init=str(model), epochs=1, max_batch_frames=40, warmup=2, progress=False)
    Trainer(cfg, log=lambda s: None).run()
    st = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    st["world_size"] = 2
    torch.save(st, out / "checkpoints" / "last.pt")
    with pytest.raises(ValueError, match="written by 2 training process"):
        Trainer(cfg, log=lambda s: None).resume()
