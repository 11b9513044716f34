"""CPU speed side by side with FunASR's ONNX Runtime deployment (issue 18), alternated in one run.

    bash benchmarks/anchors/setup.sh                                    # once: anchors venv, checkpoint, ONNX export
    .venv/bin/python benchmarks/anchors/cpu_vs_onnx.py                  # full run → benchmarks/results/cpu_vs_onnx.json
    .venv/bin/python benchmarks/anchors/cpu_vs_onnx.py --quick          # smoke test: 1 file, 1 call, 1 thread count
    .venv/bin/python benchmarks/anchors/cpu_vs_onnx.py --show benchmarks/results/cpu_vs_onnx.json

Systems, each a persistent worker process (worker.py) holding the `large` random-weight checkpoint that setup.sh
builds and exports: ours-fp32 (paraformer_ext, compiled kernels), ours-ref (kernels=False), ours-int8
(quantize="int8"), ours-bf16, and FunASR's funasr_onnx.Paraformer on model.onnx (ort-fp32) and model_quant.onnx
(ort-int8) in the anchors venv. Per thread count (ONNX Runtime's intra-op threads = torch's threads) the workers
are started together; then every round runs each item once on every system, back to back (the starting system
rotates per round), each call timed inside its worker. Items: every wav of ../shared/audio at batch 1, 30 s and
60 s of that speech end to end at batch 1, the shared wavs cycled to a batch of 8, and 8 × 30 s as one batch.
A call is audio arrays → text (frontend, model, decoding, text; ONNX: funasr_onnx's own frontend and decoding).

Reported: median wall time per item and system, RTF = time / audio seconds, the speed-up over ONNX Runtime at the
same precision (fp32 systems vs ort-fp32; int8 and bf16 vs ort-int8), peak RSS per worker (VmHWM over loading +
warm-up, and over the timed calls alone; and getrusage's ru_maxrss), token-id agreement with ours-fp32 on the
same items, the model FLOPs of each item (e2e.model_flops, from the config's geometry and the decoded token
count), each system's effective GFLOP/s, and that as a fraction of the precision's GEMM ceiling measured in the
same run at the same thread count: the best of torch (matmul, F.linear, oneDNN plain / prepacked; bf16 the
same; int8 torch._int_mm and FBGEMM's dynamic quantized linear) and ONNX Runtime (MatMul, and the
quantize_dynamic'd graph = DynamicQuantizeMatMul) on the encoder's four GEMM shapes at the item's M = padded
frames per call. "% ceiling" = the time the item's FLOPs take at the ceiling rate / the time the system took.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import e2e  # noqa: E402
from common import REPO, shared_dir  # noqa: E402
from protocol import ANCHORS_PYTHON, DEFAULT_MODEL, DEFAULT_WORK, ask, finish_all, fmt, markdown_table, median  # noqa: E402
from worker import ORT, PRECISION, SYSTEMS  # noqa: E402

SR = 16000
ENCODER_GEMMS = [(512, 1536), (512, 512), (512, 2048), (2048, 512)]  # (K, N): QKV, attention out, FFN in, FFN out
VS_ORT = {"fp32": "ort-fp32", "int8": "ort-int8", "bf16": "ort-int8"}
BASE = "ours-fp32"  # token agreement is against this system's ids
LFR_SAMPLES = 960  # one 60 ms LFR frame


# --- workload ------------------------------------------------------------------------------------------------


def write_wav(path: Path, x) -> str:
    import soundfile as sf

    if not path.exists() or sf.info(str(path)).frames != x.size:
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), x, SR, subtype="PCM_16")
    return str(path)


def build_items(a) -> dict[str, dict]:
    """{item: {"batch", "paths", "audio_s"}}: batch-1 items per file, then the batch-8 items."""
    import soundfile as sf

    sh = shared_dir()
    if sh is None:
        raise SystemExit("../shared/audio not found (set PARAFORMER_EXT_SHARED)")
    wavs = sorted((sh / "audio").glob("*.wav"))
    if a.quick:
        wavs = [w for w in wavs if w.name == "asr_example.wav"] or wavs[:1]
    stream, _ = e2e.speech_stream()
    adir = Path(a.work) / "audio"
    files = {w.stem: str(w) for w in wavs}
    if not a.quick:
        for s in a.long_s:
            files[f"concat{s:g}s"] = write_wav(adir / f"concat{s:g}s.wav", e2e.cut(stream, 0, int(s * SR)))
    items = {}
    if 1 in a.batches:
        for name, p in files.items():
            items[f"b1 {name}"] = {"batch": 1, "paths": [p]}
    if 8 in a.batches:
        cyc = [str(w) for w in wavs]
        items["b8 " + ("8 x " + wavs[0].stem if len(wavs) == 1 else "shared wavs cycled")] = {
            "batch": 8, "paths": [cyc[i % len(cyc)] for i in range(8)]}
        if not a.quick and a.batch8_long_s:
            s = a.batch8_long_s
            step = stream.size // 8
            paths = [write_wav(adir / f"cut{s:g}s_{i}.wav", e2e.cut(stream, i * step, int(s * SR))) for i in range(8)]
            items[f"b8 8 x {s:g}s"] = {"batch": 8, "paths": paths}
    for it in items.values():
        n = [sf.info(p).frames for p in it["paths"]]
        it["audio_s"] = sum(n) / SR
        it["M"] = len(n) * max(n) // LFR_SAMPLES  # padded LFR frames of the call: the encoder GEMMs' M
    return items


# --- GEMM ceilings -------------------------------------------------------------------------------------------


def m_buckets(items: dict) -> list[int]:
    """The M values measured: each item's M rounded to a power of two (≥ 64)."""
    return sorted({bucket(it["M"]) for it in items.values()})


def bucket(m: int) -> int:
    p = 64
    while p * 1.414 < m:
        p *= 2
    return p


def run_gemms(a, threads: int, Ms: list[int]) -> dict:
    shapes = json.dumps([[m, k, n] for m in Ms for k, n in ENCODER_GEMMS])
    out = {}
    for lib, py in (("torch", sys.executable), ("ort", str(a.anchors_python))):
        cmd = [py, str(HERE / "worker.py"), "--gemm", lib, "--threads", str(threads), "--shapes", shapes]
        res, err = e2e._run_child(cmd, a.timeout, threads)
        out[lib] = res or {"error": err}
        print(f"[t{threads}] GEMM rates ({lib}): " + ("ok" if res else err), flush=True)
    return out


def ceilings(gemm: dict) -> dict:
    """{precision: {M: {"gflops", "kernels": best (lib, kernel) per shape}}}: per shape the best kernel of the
    precision, combined over the encoder's four shapes as their FLOPs over the sum of their times."""
    rates = [r for lib in gemm.values() for r in lib.get("rates", []) if r.get("gflops")]
    out: dict = {}
    for prec in sorted({r["precision"] for r in rates}):
        for M in sorted({r["M"] for r in rates}):
            flop, t, best = 0.0, 0.0, {}
            for K, N in ENCODER_GEMMS:
                c = [r for r in rates if r["precision"] == prec and (r["M"], r["K"], r["N"]) == (M, K, N)]
                if not c:
                    continue
                b = max(c, key=lambda r: r["gflops"])
                f = 2.0 * M * K * N
                flop, t = flop + f, t + f / (b["gflops"] * 1e9)
                best[f"{K}x{N}"] = f"{b['lib']} {b['kernel']} {b['gflops']:.0f}"
            if t:
                out.setdefault(prec, {})[M] = {"gflops": flop / t / 1e9, "best": best}
    return out


# --- one thread count --------------------------------------------------------------------------------------


def start_worker(a, system: str, threads: int, items_json: str):
    py = str(a.anchors_python) if system in ORT else sys.executable
    cmd = [py, str(HERE / "worker.py"), "--system", system, "--model", str(a.model), "--threads", str(threads),
           "--items", items_json]
    w = e2e.WorkerProc(cmd, threads)
    ready = json.loads(w.expect("READY", a.timeout))
    return w, ready


def run_threads(a, threads: int, items: dict) -> dict:
    items_json = Path(a.work) / f"items_{os.getpid()}.json"
    items_json.write_text(json.dumps({k: v["paths"] for k, v in items.items()}))
    gemm = run_gemms(a, threads, m_buckets(items))
    workers, rows = {}, {}
    for s in a.systems:
        try:
            t = time.perf_counter()
            w, ready = start_worker(a, s, threads, str(items_json))
            rows[s] = {"ready": ready, "calls": {k: [] for k in items}}
            # the warm-up ran the largest item: its rate predicts a round over every item
            round_s = ready["warmup_s"] / max(ready["audio_s"].values()) * sum(ready["audio_s"].values())
            rows[s]["round_estimate_s"] = round_s
            print(f"[t{threads}] {s}: ready in {time.perf_counter() - t:.0f} s (warm-up {ready['warmup_s']:.1f} s, "
                  f"RSS {ready['rss_loaded_mb']:.0f} MB, a round ~{round_s:.0f} s)", flush=True)
            if a.max_round_s and round_s > a.max_round_s:
                rows[s]["failed"] = (f"skipped: its warm-up predicts ~{round_s:.0f} s per round > --max-round-s "
                                     f"{a.max_round_s:g}")
                print(f"[t{threads}] {s}: " + rows[s]["failed"], flush=True)
                w.kill()
                continue
            workers[s] = w
        except RuntimeError as e:
            rows[s] = {"failed": f"set-up: {e}"}
            print(f"[t{threads}] {s}: FAILED to start: {e}", flush=True)
    order = list(workers)
    for r in range(a.repeat):
        t_round = time.perf_counter()
        for k in items:
            rot = order[r % len(order):] + order[: r % len(order)] if order else []
            for s in rot:
                if s not in workers:
                    continue
                if a.gap_s > 0:  # let the previous system's idle threads park (ONNX Runtime's spin after a run)
                    time.sleep(a.gap_s)
                b0 = e2e.machine_busy_s()
                try:
                    got = ask(workers[s], {"cmd": "call", "item": k}, a.timeout)
                except RuntimeError as e:
                    rows[s]["failed"] = f"round {r + 1}, {k}: {e}"
                    workers.pop(s).kill()
                    print(f"[t{threads}] {s}: FAILED: {e}", flush=True)
                    continue
                b1 = e2e.machine_busy_s()
                got["others_cores"] = None if b0 is None else max(0.0, (b1 - b0 - got["cpu_s"]) / got["wall_s"])
                rows[s]["calls"][k].append(got)
        print(f"[t{threads}] round {r + 1}/{a.repeat} in {time.perf_counter() - t_round:.0f} s", flush=True)
    flops = None
    if BASE in workers:
        try:
            flops = ask(workers[BASE], {"cmd": "flops"}, a.timeout)
        except RuntimeError as e:
            print(f"[t{threads}] FLOP count failed: {e}", flush=True)
    finish_all(workers, rows, a.timeout)
    items_json.unlink(missing_ok=True)
    return analyse({"threads": threads, "gemm": gemm, "ceilings": ceilings(gemm), "flops": flops, "systems": rows}, items)


def analyse(run: dict, items: dict) -> dict:
    """Per item and system: median wall, RTF, vs ORT, GFLOP/s, % ceiling; per system: totals, memory, agreement."""
    rows, flops, ceil = run["systems"], run["flops"] or {}, run["ceilings"]
    base_ids = rows.get(BASE, {}).get("token_ids", {})
    per_item: dict = {}
    for k, it in items.items():
        for s, row in rows.items():
            walls = [c["wall_s"] for c in row.get("calls", {}).get(k, [])]
            if not walls:
                continue
            wall = statistics.median(walls)
            e = {"wall_s": wall, "walls_s": walls, "rtf": wall / it["audio_s"], "audio_s": it["audio_s"], "batch": it["batch"],
                 "others_cores": median([c["others_cores"] for c in row["calls"][k] if c.get("others_cores") is not None])}
            if k in flops:
                e["gflops"] = flops[k]["total"] / wall / 1e9
                c = ceil.get(PRECISION[s], {}).get(str(bucket(it["M"]))) or ceil.get(PRECISION[s], {}).get(bucket(it["M"]))
                if c:
                    e["ceiling_gflops"] = c["gflops"]
                    e["frac_ceiling"] = e["gflops"] / c["gflops"]
            per_item.setdefault(k, {})[s] = e
    for k, d in per_item.items():
        for s, e in d.items():
            ref = d.get(VS_ORT[PRECISION[s]])
            if ref and s not in ORT:
                e["speedup_vs_ort"] = ref["wall_s"] / e["wall_s"]
    summary = {}
    for s, row in rows.items():
        if "failed" in row and "calls" not in row:
            summary[s] = {"failed": row["failed"]}
            continue
        done = [k for k in per_item if s in per_item[k]]
        tot_t = sum(per_item[k][s]["wall_s"] for k in done)
        tot_a = sum(items[k]["audio_s"] for k in done)
        out = {"rtf": tot_t / tot_a if tot_a else None, "items": len(done), "failed": row.get("failed")}
        ort = VS_ORT[PRECISION[s]]
        both = [k for k in done if ort in per_item[k]]
        if s not in ORT and both:
            out["speedup_vs_ort"] = sum(per_item[k][ort]["wall_s"] for k in both) / sum(per_item[k][s]["wall_s"] for k in both)
        fl = [k for k in done if "ceiling_gflops" in per_item[k][s]]
        if fl:
            f = sum(flops[k]["total"] for k in fl)
            t = sum(per_item[k][s]["wall_s"] for k in fl)
            t_ceil = sum(flops[k]["total"] / (per_item[k][s]["ceiling_gflops"] * 1e9) for k in fl)
            out.update(gflops=f / t / 1e9, frac_ceiling=t_ceil / t)
        r = row.get("ready", {})
        run_peak = row.get("peak_rss_mb") if row.get("hwm_reset") else None
        out.update(setup_peak_rss_mb=r.get("setup_peak_rss_mb"), run_peak_rss_mb=run_peak,
                   peak_rss_mb=max(x for x in (r.get("setup_peak_rss_mb"), run_peak, 0) if x is not None) or None,
                   ru_maxrss_mb=row.get("ru_maxrss_mb"), rss_loaded_mb=r.get("rss_loaded_mb"), load_s=r.get("load_s"))
        if base_ids and row.get("token_ids"):
            ks = [k for k in row["token_ids"] if k in base_ids]
            cmp_ = e2e.compare([u for k in ks for u in base_ids[k]], [u for k in ks for u in row["token_ids"][k]])
            out["vs_fp32"] = {**cmp_, "token_agreement": 1 - cmp_["token_edit_rate"]}
        summary[s] = out
    run["items"] = per_item
    run["summary"] = summary
    if flops:
        run["gflop_per_audio_s"] = {k: {part: v / items[k]["audio_s"] / 1e9 for part, v in flops[k].items()} for k in flops}
    return run


# --- report --------------------------------------------------------------------------------------------------


def tables(data: dict) -> str:
    out = []
    for run in data["runs"]:
        th = run["threads"]
        systems = [s for s in SYSTEMS if s in run["systems"]]
        head = ["item", "audio s"] + systems
        rows = []
        for k, d in run["items"].items():
            any_e = next(iter(d.values()))
            cells = []
            for s in systems:
                e = d.get(s)
                if not e:
                    cells.append("skipped" if str(run["systems"][s].get("failed", "")).startswith("skipped") else "failed")
                    continue
                c = f"{e['rtf']:.4f}"
                if "speedup_vs_ort" in e:
                    c += f" ({e['speedup_vs_ort']:.2f}x)"
                cells.append(c)
            rows.append([k, f"{any_e['audio_s']:.1f}"] + cells)
        out.append(f"### {th} thread{'s' if th > 1 else ''}: RTF (median of {data['args']['repeat']} calls; (x) = speed-up over "
                   f"ONNX Runtime at the same precision, bf16 vs ort-int8)\n\n" + markdown_table(head, rows))
        head = ["system", "RTF (all items)", "vs ORT", "GFLOP/s", "% ceiling", "peak RSS MB", "run RSS MB",
                "utts = fp32", "token agreement"]
        rows = []
        for s in systems:
            m = run["summary"].get(s, {})
            if m.get("rtf") is None:
                rows.append([s, "failed: " + str(m.get("failed"))[:60]] + [None] * 7)
                continue
            v = m.get("vs_fp32")
            rows.append([s, fmt(m["rtf"], ".4f"), fmt(m.get("speedup_vs_ort"), ".2f"), fmt(m.get("gflops"), ".0f"),
                         fmt(100 * m["frac_ceiling"] if m.get("frac_ceiling") is not None else None, ".0f"),
                         fmt(m.get("peak_rss_mb"), ".0f"), fmt(m.get("run_peak_rss_mb"), ".0f"),
                         f"{v['compared'] - v['mismatches']}/{v['compared']}" if v else None,
                         fmt(100 * v["token_agreement"], ".1f") + "%" if v else None])
        out.append(markdown_table(head, rows))
        ce = run.get("ceilings", {})
        out.append("GEMM ceilings (GFLOP/s over the encoder's 4 shapes, best kernel per shape): " + "; ".join(
            f"{p} " + ", ".join(f"M={m} {c['gflops']:.0f}" for m, c in sorted(v.items(), key=lambda x: int(x[0])))
            for p, v in ce.items()))
        g = run.get("gflop_per_audio_s")
        if g:
            out.append("model GFLOP per audio second (e2e.model_flops: every Linear, attention matmul, FSMN and predictor "
                       "convolution, CIF sum and the output layer, from the config's geometry, the item's LFR frames and our "
                       "fp32 token count; encoder + predictor + decoder): " + ", ".join(
                           f"{k} {v['total']:.2f} ({v['encoder']:.2f} + {v['predictor']:.3f} + {v['decoder']:.2f})" for k, v in g.items()))
    env = data["env"]
    out.append(f"machine: {env.get('cpu')}, {env.get('cpu_count')} cores, flags {env.get('cpu_flags')}; "
               f"torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}; load average at start {env.get('load_avg_start')}")
    return "\n\n".join(out)


def env(a, runs) -> dict:
    info = e2e.env_info(SimpleNamespace(threads=a.threads[0], device="cpu"))
    info.pop("threads", None)
    try:
        flags = open("/proc/cpuinfo").read().split("flags", 1)[1].split("\n", 1)[0].split()
        info["cpu_flags"] = " ".join(f for f in flags if f.startswith(("avx", "amx", "fma")))
    except (OSError, IndexError):
        info["cpu_flags"] = None
    info["mem_total_gb"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    for run in runs:
        for row in run["systems"].values():
            if row.get("ready", {}).get("onnxruntime"):
                info["onnxruntime"] = row["ready"]["onnxruntime"]
    info["platform"] = platform.platform()
    return info


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="checkpoint dir with model.onnx and model_quant.onnx (setup.sh)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="where the long wavs are written")
    ap.add_argument("--anchors-python", type=Path, default=ANCHORS_PYTHON)
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--batches", type=int, nargs="+", default=None, choices=[1, 8], help="default 1 8 (--quick: 1)")
    ap.add_argument("--long-s", type=float, nargs="*", default=[30.0, 60.0], help="batch-1 items: the shared speech end to end")
    ap.add_argument("--batch8-long-s", type=float, default=30.0, help="the long batch-8 item: 8 cuts this long (0: none)")
    ap.add_argument("--repeat", type=int, default=5, help="calls per item and system (interleaved rounds); the median is kept")
    ap.add_argument("--systems", nargs="+", default=SYSTEMS, choices=SYSTEMS)
    ap.add_argument("--gap-s", type=float, default=0.3, help="pause before each call, so the idle threads of the system before it park (ONNX Runtime spins after a run: without a pause the next system pays for it)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds for one worker answer")
    ap.add_argument("--max-round-s", type=float, default=600.0,
                    help="leave out a system whose warm-up predicts more than this per round (0: never)")
    ap.add_argument("--quick", action="store_true", help="smoke test: asr_example only, batch 1 unless --batches says, 1 call, 1 thread count (the first of --threads)")
    ap.add_argument("--json", type=Path, default=None, help="default: benchmarks/results/cpu_vs_onnx.json (quick: the work dir)")
    ap.add_argument("--show", type=Path, default=None, help="print the tables of a results JSON and exit")
    a = ap.parse_args(argv)
    if a.quick:
        a.repeat, a.threads = 1, a.threads[:1]
    if a.batches is None:
        a.batches = [1] if a.quick else [1, 8]
    if a.json is None:
        a.json = (a.work / "cpu_vs_onnx_quick.json") if a.quick else REPO / "benchmarks" / "results" / "cpu_vs_onnx.json"
    return a


def check_setup(a) -> None:
    missing = [p for p in (a.model / "model.pt", a.model / "model.onnx", a.model / "model_quant.onnx", a.anchors_python)
               if not p.exists()]
    if missing:
        raise SystemExit("missing " + ", ".join(map(str, missing)) + ": run `bash benchmarks/anchors/setup.sh` first")


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.show:
        print(tables(json.loads(a.show.read_text())))
        return 0
    check_setup(a)
    items = build_items(a)
    print(f"items: " + ", ".join(f"{k} ({v['audio_s']:.1f} s)" for k, v in items.items()), flush=True)
    t0 = time.perf_counter()
    data = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items() if k != "show"},
            "items": items, "runs": []}
    for th in a.threads:
        data["runs"].append(run_threads(a, th, items))
        data["env"] = env(a, data["runs"])
        data["wall_s"] = time.perf_counter() - t0
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(data, indent=1))
    print("\n" + tables(data) + "\n")
    print(f"wrote {a.json} ({data['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
