"""One training step, ours vs FunASR's own (issue 11 §5), alternated in one run.

    bash benchmarks/anchors/setup.sh                    # once: the anchors venv with funasr 1.4.16 (its other steps too)
    .venv/bin/python benchmarks/bench_train.py          # full run → benchmarks/results/train_step_cpu.json
    .venv/bin/python benchmarks/bench_train.py --quick  # smoke test: a batch of 4, 1 step each

A step = forward + backward + AdamW step (+ zero_grad), the model in train mode (config.yaml's SpecAugLFR and
dropouts, the GLM sampler at the config's sampling_ratio), on the same batch every step:
  ours-kernels  paraformer_ext.training.compute_loss on paraformer_ext.load(DIR, kernels=True).model
  ours-ref      the same with kernels=False (the plain PyTorch reference)
  ours-bf16     ours-kernels under bf16 autocast (the trainer's --bf16: float32 weights, gradients and AdamW);
                fast only where the CPU computes bf16 natively (AVX-512 BF16 / AMX), emulated and slow elsewhere
  funasr        FunASR 1.4.16's Paraformer.forward (AutoModel(model=DIR).model) + backward, in the anchors venv
Every system is a persistent worker (benchmarks/anchors/protocol.py) holding the same checkpoint (the golden
`small` preset by default, built by ../shared/golden/make_checkpoint.py) and the same batch: 16 utterances of
4-8 s cut from ../shared/audio's speech (e2e.plan_workload, seeded), as frontend features computed once by our
frontend (FunASR-exact; FunASR's training also hands the model features), with seeded random targets of ~4
tokens per second, padded with -1. Rounds alternate the systems (the first one rotates), one timed step each;
the first --warmup (2) steps of every worker are not timed.

Same loss: before training, each worker evaluates the loss of the batch in eval mode with the GLM sampler off
(sampling_ratio 0: deterministic) from the same initial weights; the results list the three and their relative
differences. Memory: each worker's peak RSS (VmHWM) over loading + the warm-up step, and over the timed steps
alone (reset after the warm-up), plus getrusage's ru_maxrss. Without the anchors venv the funasr system is
skipped with a message.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "anchors"))
from protocol import ANCHORS_PYTHON, DEFAULT_WORK, REPO, ask, finish_all, fmt, markdown_table, proc_status_mb, reset_peak_rss, serve, timed  # noqa: E402

SYSTEMS = ["ours-kernels", "ours-ref", "ours-bf16", "funasr"]
TOKENS_PER_S = 4.0


# --- worker side (either venv) -----------------------------------------------------------------------------------


def worker_main(a) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    z = np.load(a.batch)
    speech, slen = torch.from_numpy(z["speech"]), torch.from_numpy(z["speech_lengths"])
    text, tlen = torch.from_numpy(z["text"]), torch.from_numpy(z["text_lengths"])
    t0 = time.perf_counter()
    if a.worker == "funasr":
        from funasr import AutoModel

        # ncpu: AutoModel sets torch's thread count itself (default 4)
        model = AutoModel(model=a.model, device="cpu", ncpu=a.threads, disable_update=True, disable_pbar=True,
                          log_level="ERROR").model
        model.requires_grad_(True)

        def loss_fn(sampling_ratio=None):
            saved = model.sampling_ratio
            if sampling_ratio is not None:
                model.sampling_ratio = sampling_ratio
            try:
                loss, stats, _ = model(speech, slen, text, tlen)
            finally:
                model.sampling_ratio = saved
            return {"loss": loss, "loss_att": stats["loss_att"], "loss_pre": stats["loss_pre"]}
    else:
        import paraformer_ext
        from paraformer_ext.training import compute_loss

        model = paraformer_ext.load(a.model, kernels=a.worker != "ours-ref").model.requires_grad_(True)
        bf16 = a.worker == "ours-bf16"

        def loss_fn(sampling_ratio=None):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return compute_loss(model, speech, slen, text, tlen, sampling_ratio=sampling_ratio)
    load_s = time.perf_counter() - t0
    torch.set_num_threads(a.threads)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)

    def check(cmd):
        model.eval()
        with torch.no_grad():
            out = loss_fn(sampling_ratio=0.0)
        return {k: float(out[k]) for k in ("loss", "loss_att", "loss_pre")}

    def step():
        model.train()
        t0 = time.perf_counter()
        out = loss_fn()
        t1 = time.perf_counter()
        out["loss"].backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        return float(out["loss"].detach()), {"forward_s": t1 - t0, "backward_s": t2 - t1, "optimizer_s": t3 - t2}

    steps = []

    def do_step(cmd):
        (loss, split), wall, cpu = timed(step)
        steps.append(wall)
        return {"wall_s": wall, "cpu_s": cpu, "loss": loss, **split}

    first = check({})
    warm_s = [timed(step)[1] for _ in range(a.warmup)]
    setup_peak = proc_status_mb("VmHWM")
    hwm_reset = reset_peak_rss()
    ready = {"system": a.worker, "load_s": load_s, "warmup_step_s": warm_s, "setup_peak_rss_mb": setup_peak,
             "hwm_reset": hwm_reset, "eval_loss": first, "params": sum(p.numel() for p in params),
             "torch": torch.__version__, "threads": a.threads,
             "torch_threads": torch.get_num_threads()}
    if a.worker == "funasr":
        import importlib.metadata as md

        ready["funasr"] = md.version("funasr")
    serve(ready, {"step": do_step, "finish": lambda cmd: {"walls_s": steps}})


# --- parent --------------------------------------------------------------------------------------------------------


def make_batch(a, model_dir: str, path: Path) -> dict:
    """The batch as frontend features + seeded targets in an npz both venvs read."""
    import numpy as np
    import torch

    import e2e
    import paraformer_ext

    stream, source = e2e.speech_stream(a.seed)
    starts, lengths = e2e.plan_workload(stream.size, n=a.batch, seed=a.seed, min_s=a.min_s, max_s=a.max_s)
    waves = [e2e.cut(stream, int(s), int(n)).astype(np.float32) / 32768.0 for s, n in zip(starts, lengths)]
    pipe = paraformer_ext.load(model_dir).pipeline
    wave = torch.zeros(len(waves), max(w.size for w in waves))
    for i, w in enumerate(waves):
        wave[i, : w.size] = torch.from_numpy(w)
    with torch.inference_mode():
        feats, flens = pipe.features(wave, torch.tensor([w.size for w in waves]))
    rng = np.random.default_rng(a.seed + 7)
    V = len(pipe.tokens)
    tl = np.array([max(1, int(round(n / 16000 * TOKENS_PER_S))) for n in lengths], dtype=np.int64)
    text = np.full((len(waves), int(tl.max())), -1, dtype=np.int64)
    for i, n in enumerate(tl):
        text[i, :n] = rng.integers(3, V - 1, size=n)  # not <blank> <s> </s>, not <unk>
    np.savez(path, speech=feats.numpy(), speech_lengths=flens.numpy().astype(np.int64), text=text, text_lengths=tl)
    return {"utterances": len(waves), "audio_s": float(sum(lengths)) / 16000, "min_s": float(min(lengths)) / 16000,
            "max_s": float(max(lengths)) / 16000, "frames": int(flens.sum()), "padded_frames": int(feats.shape[0] * feats.shape[1]),
            "tokens": int(tl.sum()), "source": source, "seed": a.seed}


def run(a) -> dict:
    import e2e

    model_dir = str(a.model) if a.model else e2e.model_dir_for(a.preset)
    Path(a.work).mkdir(parents=True, exist_ok=True)
    bpath = Path(a.work) / f"train_batch_{os.getpid()}.npz"
    batch = make_batch(a, model_dir, bpath)
    print(f"batch: {batch['utterances']} utterances, {batch['audio_s']:.1f} s of audio, {batch['tokens']} target tokens; "
          f"model {model_dir}", flush=True)
    systems = list(a.systems)
    rows: dict = {}
    if "funasr" in systems and not Path(a.anchors_python).exists():
        rows["funasr"] = {"skipped": f"{a.anchors_python} not found: run `bash benchmarks/anchors/setup.sh` for FunASR's step"}
        print("funasr: skipped (" + rows["funasr"]["skipped"] + ")", flush=True)
        systems.remove("funasr")
    workers = {}
    for s in systems:
        py = str(a.anchors_python) if s == "funasr" else sys.executable
        cmd = [py, os.path.abspath(__file__), "--worker", s, "--model", model_dir, "--batch-npz", str(bpath), "--threads", str(a.threads),
               "--warmup", str(a.warmup)]
        w = e2e.WorkerProc(cmd, a.threads)
        try:
            t = time.perf_counter()
            rows[s] = json.loads(w.expect("READY", a.timeout))
            rows[s]["steps"] = []
            workers[s] = w
            print(f"{s}: ready in {time.perf_counter() - t:.0f} s (warm-up steps {', '.join(f'{x:.2f}' for x in rows[s]['warmup_step_s'])} s, "
                  f"eval loss {rows[s]['eval_loss']['loss']:.6f})", flush=True)
        except RuntimeError as e:
            w.kill()
            rows[s] = {"failed": f"set-up: {e}"}
            print(f"{s}: FAILED: {e}", flush=True)
    order = list(workers)
    for r in range(a.repeat):
        for s in order[r % len(order):] + order[: r % len(order)]:
            if s not in workers:
                continue
            b0 = e2e.machine_busy_s()
            try:
                got = ask(workers[s], {"cmd": "step"}, a.timeout)
            except RuntimeError as e:
                rows[s]["failed"] = f"step {r + 1}: {e}"
                workers.pop(s).kill()
                continue
            b1 = e2e.machine_busy_s()
            got["others_cores"] = None if b0 is None else max(0.0, (b1 - b0 - got["cpu_s"]) / got["wall_s"])
            rows[s]["steps"].append(got)
        print(f"round {r + 1}/{a.repeat}: " + ", ".join(
            f"{s} {x['wall_s']:.2f} s (fwd {x['forward_s']:.2f}, bwd {x['backward_s']:.2f}, opt {x['optimizer_s']:.2f}; "
            f"cpu {x['cpu_s']:.2f} s, others {x['others_cores'] or 0:.1f} cores)"
            for s in order if s in workers and rows[s]["steps"] for x in [rows[s]["steps"][-1]]), flush=True)
    finish_all(workers, rows, a.timeout)
    bpath.unlink(missing_ok=True)
    for s, row in rows.items():
        walls = [x["wall_s"] for x in row.get("steps", [])]
        if walls:
            row["step_s"] = statistics.median(walls)
            for k in ("forward_s", "backward_s", "optimizer_s", "cpu_s"):
                row[k] = statistics.median(x[k] for x in row["steps"])
            row["audio_s_per_s"] = batch["audio_s"] / row["step_s"]
            run_peak = row.get("peak_rss_mb") if row.get("hwm_reset") else None
            row["run_peak_rss_mb"] = run_peak
            row["peak_rss_mb"] = max(x for x in (row.get("setup_peak_rss_mb"), run_peak, 0) if x is not None) or None
    ref = rows.get("funasr", {})
    for s, row in rows.items():
        if s != "funasr" and row.get("step_s") and ref.get("step_s"):
            row["speedup_vs_funasr"] = ref["step_s"] / row["step_s"]
            row["peak_rss_vs_funasr"] = row["peak_rss_mb"] / ref["peak_rss_mb"] if ref.get("peak_rss_mb") else None
        if row.get("eval_loss") and ref.get("eval_loss"):
            row["eval_loss_rel_diff_vs_funasr"] = {k: abs(row["eval_loss"][k] - ref["eval_loss"][k]) / max(abs(ref["eval_loss"][k]), 1e-30)
                                                   for k in row["eval_loss"]}
    import e2e as _e

    from types import SimpleNamespace

    env = _e.env_info(SimpleNamespace(threads=a.threads, device="cpu"))
    return {"env": env, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items() if k not in ("worker", "show")},
            "model_dir": model_dir, "batch": batch, "systems": rows}


def table(data: dict) -> str:
    head = ["system", "step s (median)", "fwd / bwd / opt s", "audio s / s", "vs FunASR", "peak RSS MB", "run RSS MB", "eval loss", "rel. diff vs FunASR"]
    rows = []
    for s in SYSTEMS:
        r = data["systems"].get(s)
        if r is None:
            continue
        if "step_s" not in r:
            rows.append([s, r.get("skipped") or r.get("failed")] + [None] * 7)
            continue
        d = r.get("eval_loss_rel_diff_vs_funasr")
        rows.append([s, fmt(r["step_s"], ".3f"), f"{r['forward_s']:.2f} / {r['backward_s']:.2f} / {r['optimizer_s']:.2f}",
                     fmt(r["audio_s_per_s"], ".1f"), fmt(r.get("speedup_vs_funasr"), ".2f"),
                     fmt(r.get("peak_rss_mb"), ".0f"), fmt(r.get("run_peak_rss_mb"), ".0f"), fmt(r["eval_loss"]["loss"], ".6f"),
                     fmt(d["loss"], ".1e") if d and s != "funasr" else None])
    b = data["batch"]
    return (markdown_table(head, rows) + f"\n\nbatch: {b['utterances']} utterances of {b['min_s']:.1f}-{b['max_s']:.1f} s "
            f"({b['audio_s']:.1f} s, {b['tokens']} target tokens), {data['args']['threads']} threads, "
            f"{data['args']['repeat']} timed steps per system (alternated); model {data['model_dir']}")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", choices=["small", "large"], help="golden checkpoint preset (default small)")
    ap.add_argument("--model", type=Path, default=None, help="a FunASR model directory instead of the preset's")
    ap.add_argument("--batch", type=int, default=16, help="utterances in the batch")
    ap.add_argument("--min-s", type=float, default=4.0)
    ap.add_argument("--max-s", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=10, help="timed steps per system")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per system first")
    ap.add_argument("--systems", nargs="+", default=SYSTEMS, choices=SYSTEMS)
    ap.add_argument("--anchors-python", type=Path, default=ANCHORS_PYTHON)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--quick", action="store_true", help="smoke test: a batch of 4, 1 timed step per system")
    ap.add_argument("--json", type=Path, default=None, help="default: benchmarks/results/train_step_cpu.json (quick: the work dir)")
    ap.add_argument("--show", type=Path, default=None)
    ap.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    ap.add_argument("--batch-npz", dest="batch_npz", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.quick:
        a.batch, a.repeat = min(a.batch, 4), 1
    if a.json is None:
        a.json = (a.work / "train_step_quick.json") if a.quick else REPO / "benchmarks" / "results" / "train_step_cpu.json"
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.worker:
        a.batch = a.batch_npz
        a.model = str(a.model)
        worker_main(a)
        return 0
    if a.show:
        print(table(json.loads(a.show.read_text())))
        return 0
    t0 = time.perf_counter()
    data = run(a)
    data["wall_s"] = time.perf_counter() - t0
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(data, indent=1))
    print("\n" + table(data) + f"\n\nwrote {a.json} ({data['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
