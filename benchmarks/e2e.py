"""End-to-end speed, audio arrays (or wav files) → text: the plain reference one file at a time, the reference
batched, and the engine in each dtype, on the same workload in the same run.

    # CPU, both presets, the committed results (one command):
    .venv/bin/python benchmarks/e2e.py --device cpu --threads 2 --preset large small --total-s 150 \\
        --max-system-s 200 --json benchmarks/results/e2e_cpu.json
    # GPU (benchmarks/gpu_check.sh runs this):
    python benchmarks/e2e.py --device cuda --preset large --total-s 7200 --ref-max-s 1200 --json $OUT/e2e_cuda.json
    # re-print the table of a results file:
    python benchmarks/e2e.py --show benchmarks/results/e2e_cpu.json [--markdown]

Workload: utterances of uniform 2-20 s length (seeded), cut end to end from the speech of ../shared/audio
tiled into one endless stream (synthetic speech when that folder is absent), held as float32 arrays in memory
(--inputs files writes them as 16-bit wav files first and times the file path too). Every system gets the same
workload; a fingerprint of it is checked in every child.

Each system runs in a fresh process (so its peak RSS is its own): load the model once, warm up on a few
utterances (the longest included), then time --repeat passes over the whole workload and keep the median.

Reported per system: audio seconds, wall seconds (median), ×real time (audio s / wall s), speed-up over
ref-fp32-1by1, seconds per engine stage (read, frontend, encoder, predictor+CIF, decoder, text), peak host
RSS (whole process, and during the timed passes alone), the weights' bytes, peak CUDA memory, the model FLOPs
per second achieved and their share of the matmul rate measured in the same run (a large GEMM in the
system's dtype), and how many transcripts differ from ref-fp32-1by1 (token ids).

On CUDA the timed passes run without the per-stage timer (it synchronises the device at each mark) and one
extra pass gives the stage split; on CPU the marks cost nothing and the timed passes carry them.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, max_rss_mb, proc_status_mb, reset_peak_rss, shared_dir  # noqa: E402

SR = 16000
STAGES = ("read", "frontend", "encoder", "predictor", "decoder", "text")

# name: (kernels, dtype, batched, extra load arguments)
# (the run order: what the targets need first, so a time-boxed run keeps it)
SYSTEMS = {
    "ref-fp32-1by1": (False, "float32", False, {}),
    "engine-fp32": (True, "float32", True, {}),
    "engine-fp32-1by1": (True, "float32", False, {}),  # the compiled ops' gain without the batching's
    "engine-fp16": (True, "float16", True, {}),
    "engine-bf16": (True, "bfloat16", True, {}),
    "ref-fp16-batched": (False, "float16", True, {}),
    "engine-int8": (True, None, True, {"quantize": "int8"}),  # dtype: --int8-dtype
}
REFERENCE = "ref-fp32-1by1"


# --- workload ------------------------------------------------------------------------------------------------


def speech_stream(seed: int = 0) -> tuple[np.ndarray, str]:
    """The source speech as one int16 stream: the shared wavs end to end (sorted by name), else synthetic speech.
    Returns (stream, what it is)."""
    sh = shared_dir()
    if sh is not None:
        import soundfile as sf

        paths = sorted((sh / "audio").glob("*.wav"))
        clips = []
        for p in paths:
            x, sr = sf.read(str(p), dtype="int16", always_2d=True)
            if sr != SR:
                raise SystemExit(f"{p}: {sr} Hz; the workload builder expects {SR} Hz")
            clips.append(x.mean(axis=1).astype(np.int16) if x.shape[1] > 1 else x[:, 0])
        if clips:
            return np.concatenate(clips), "shared audio: " + ", ".join(p.name for p in paths)
    from paraformer_ext.synthetic import synthetic_speech

    clips = [np.round(synthetic_speech(s, seed + i) * 32767).astype(np.int16) for i, s in enumerate((5.5, 8.0, 5.0))]
    return np.concatenate(clips), "synthetic speech (../shared/audio not found)"


def plan_workload(stream_len: int, n: int | None = None, total_s: float | None = None, seed: int = 0,
                  min_s: float = 2.0, max_s: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """Utterance (starts, lengths) in samples: lengths uniform in [min_s, max_s] seconds, cut one after the
    other from a stream of stream_len samples tiled end to end (starts are taken modulo stream_len).
    Exactly one of n (utterance count) and total_s (draw until the audio reaches total_s) must be given."""
    if (n is None) == (total_s is None):
        raise ValueError("give exactly one of n and total_s")
    if not 0 < min_s <= max_s:
        raise ValueError(f"need 0 < min_s <= max_s, got {min_s}, {max_s}")
    if stream_len < 1:
        raise ValueError("empty source stream")
    rng = np.random.default_rng(seed)
    lo, hi = int(round(min_s * SR)), int(round(max_s * SR))
    if n is not None:
        lengths = rng.integers(lo, hi + 1, size=int(n))
    else:
        want = int(round(total_s * SR))
        out, got = [], 0
        while got < want:
            chunk = rng.integers(lo, hi + 1, size=64)
            for x in chunk:
                if got >= want:
                    break
                out.append(int(x))
                got += int(x)
        lengths = np.asarray(out, dtype=np.int64)
    lengths = lengths.astype(np.int64)
    starts = (np.concatenate([[0], np.cumsum(lengths)[:-1]]) % stream_len).astype(np.int64)
    return starts, lengths


def cut(stream: np.ndarray, start: int, length: int) -> np.ndarray:
    """stream[start : start + length], wrapping around the end (the stream is tiled)."""
    L = stream.size
    if start + length <= L:
        return stream[start : start + length]
    idx = (start + np.arange(length)) % L
    return stream[idx]


def build_workload(a) -> tuple[list[np.ndarray], dict, list[int]]:
    """float32 arrays (int16 / 32768, what soundfile gives for the same samples in a PCM_16 file), a
    description with a fingerprint of the exact samples, and the lengths in samples."""
    stream, source = speech_stream(a.seed)
    starts, lengths = plan_workload(stream.size, a.n, a.total_s, a.seed, a.min_s, a.max_s)
    h = hashlib.sha256()
    waves = []
    for s, n in zip(starts, lengths):
        x = cut(stream, int(s), int(n))
        h.update(x.tobytes())
        waves.append(x.astype(np.float32) / 32768.0)
    desc = {"utterances": len(waves), "audio_s": float(lengths.sum()) / SR, "min_s": float(lengths.min()) / SR,
            "max_s": float(lengths.max()) / SR, "mean_s": float(lengths.mean()) / SR, "seed": a.seed,
            "length_range_s": [a.min_s, a.max_s], "source": source, "source_s": stream.size / SR,
            "sha256": h.hexdigest(), "inputs": a.inputs, "array_mb": sum(w.nbytes for w in waves) / 2**20}
    return waves, desc, [int(x) for x in lengths]


def write_wavs(waves: list[np.ndarray], out_dir: Path) -> list[str]:
    import soundfile as sf

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, w in enumerate(waves):
        p = out_dir / f"utt{i:05d}.wav"
        if not p.exists() or sf.info(str(p)).frames != w.size:
            sf.write(str(p), np.round(w * 32768.0).astype(np.int16), SR, subtype="PCM_16")
        paths.append(str(p))
    return paths


# --- FLOPs ---------------------------------------------------------------------------------------------------


def encoder_layer_flops(T: int, in_size: int, d: int, units: int, kernel: int) -> int:
    """One SAN-M encoder layer over T frames (2 FLOPs per multiply-add): the fused QKV projection, the
    attention scores and their product with V (all heads together: T·T·d each), the output projection, the
    depthwise FSMN convolution on V (kernel taps per channel), the two FFN Linears."""
    return 2 * T * (in_size * 3 * d + 2 * T * d + d * d + d * kernel + 2 * d * units)


def decoder_layer_flops(N: int, T: int, d: int, units: int, kernel: int, fsmn: bool, cross: bool, d_enc: int | None = None) -> int:
    """One SAN-M decoder layer for N positions over T encoder frames: the FFN (d → units → d), the FSMN
    convolution when the layer has one, and the cross-attention when it has one (Q and output projections on
    N rows, the K/V projection of the encoder output on T rows, scores and their product with V)."""
    d_enc = d if d_enc is None else d_enc
    f = 2 * N * 2 * d * units
    if fsmn:
        f += 2 * N * d * kernel
    if cross:
        f += 2 * (N * 2 * d * d + T * d_enc * 2 * d + 2 * N * T * d)
    return f


def model_flops(cfg, T: int, N: int) -> dict[str, int]:
    """Model FLOPs of one utterance of T LFR frames that decodes N positions, from the geometry alone.

    cfg: paraformer_ext.model.config.ParaformerConfig. Counts matrix work only (2 per multiply-add): every
    Linear, the attention matmuls, the FSMN depthwise convolutions, the predictor's convolution and output
    Linear, the CIF weighted sums (each frame adds into one or two embeddings: T + N row updates) and the
    output layer over the vocabulary. Not counted: the frontend (FFT, mel filterbank), LayerNorm, softmax,
    biases and other elementwise work. Padding is not counted either: these are the FLOPs the answer needs,
    so a padded batch shows up as a lower achieved rate.
    Returns {"encoder", "predictor", "decoder", "total"}."""
    e, dc, p = cfg.encoder, cfg.decoder, cfg.predictor
    d = e.output_size
    enc = encoder_layer_flops(T, e.input_size, d, e.linear_units, e.kernel_size)
    enc += (e.num_blocks - 1) * encoder_layer_flops(T, d, d, e.linear_units, e.kernel_size)
    taps = p.l_order + p.r_order + 1
    pred = 2 * T * p.idim * p.idim * taps + 2 * T * p.idim + 2 * (T + N) * p.idim
    n2 = dc.num_blocks - dc.att_layer_num
    dec = dc.att_layer_num * decoder_layer_flops(N, T, d, dc.linear_units, dc.kernel_size, True, True)
    dec += n2 * decoder_layer_flops(N, T, d, dc.linear_units, dc.kernel_size, True, False)
    dec += decoder_layer_flops(N, T, d, dc.linear_units, dc.kernel_size, False, False)  # decoders3: FFN only
    dec += 2 * N * d * cfg.vocab_size
    return {"encoder": enc, "predictor": pred, "decoder": dec, "total": enc + pred + dec}


# --- one system, in its own process -------------------------------------------------------------------------


def _sync(torch, device) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Worker:
    """One system in its own process: set up once (workload, model, warm-up), then run timed passes when the
    parent asks, so the parent can interleave the passes of all systems (the load on a shared machine drifts;
    round-robin passes see the same drift)."""

    def __init__(self, a):
        import torch

        import paraformer_ext

        self.a, self.torch = a, torch
        kernels, dtype, batched, extra = SYSTEMS[a.system]
        if a.system == "engine-int8":
            dtype = a.int8_dtype or ("float16" if a.device == "cuda" else "float32")
        self.batched = batched
        torch.set_num_threads(a.threads)
        out: dict = {"system": a.system, "kernels": kernels, "dtype": dtype, "batched": batched, "load_avg_start": os.getloadavg()[0]}
        self.out = out
        rss_imports = proc_status_mb("VmRSS")
        waves, desc, lengths = build_workload(a)
        if desc["sha256"] != a.expect_sha256:
            raise SystemExit(f"workload fingerprint {desc['sha256']} differs from the parent's {a.expect_sha256}")
        inputs: list = write_wavs(waves, Path(a.wav_dir)) if a.inputs == "files" else waves
        del waves
        n_in = len(inputs)
        if not batched and a.ref_max_s:  # a prefix of the workload, whose lengths are random in order
            acc, k = 0.0, 0
            for k, L in enumerate(lengths):
                acc += L / SR
                if acc >= a.ref_max_s:
                    break
            inputs, lengths = inputs[: k + 1], lengths[: k + 1]
            out["subset"] = f"first {k + 1} of {n_in} utterances ({acc:.0f} s of {desc['audio_s']:.0f} s)"
        self.inputs, self.lengths = inputs, lengths
        self.audio_s = out["audio_s"] = sum(lengths) / SR
        rss_workload = proc_status_mb("VmRSS")
        if a.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            self.asr = paraformer_ext.load(a.model, device=a.device, dtype=dtype, kernels=kernels, **extra)
        except TypeError as e:
            self.asr = None
            out["skipped"] = f"paraformer_ext.load does not take {extra} yet ({e})"
            return
        _sync(torch, a.device)
        out["load_s"] = time.perf_counter() - t0
        model = self.asr.model
        out["weights_mb"] = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())) / 2**20
        out.update(rss_imports_mb=rss_imports, rss_workload_mb=rss_workload, rss_after_load_mb=proc_status_mb("VmRSS"), load_peak_rss_mb=proc_status_mb("VmHWM"))
        if a.device == "cuda":
            out["cuda_weights_mb"] = torch.cuda.memory_allocated() / 2**20
        self.opts = dict(segmenter="none", max_batch_frames=a.max_batch_frames, max_padding=a.max_padding)
        if not batched:
            self.opts["max_batch_size"] = 1
        self.oom = 0
        self.walls: list[float] = []
        self.cpus: list[float] = []
        self.loads: list[float] = []
        self.stage_runs: list[dict] = []
        self.res = None
        order = sorted(range(len(inputs)), key=lambda i: -lengths[i])
        warm = sorted(set(order[:1] + list(range(min(a.warmup_n, len(inputs))))))
        with torch.inference_mode():
            warm_s, _, _ = self.run_once([inputs[i] for i in warm], profile=False)
            if a.device == "cuda":  # the first run pays CUDA's one-time costs (module loading, cuBLAS set-up)
                warm_s, _, _ = self.run_once([inputs[i] for i in warm], profile=False)
        warm_audio = sum(lengths[i] for i in warm) / SR
        out["warmup"] = {"utterances": len(warm), "audio_s": warm_audio, "wall_s": warm_s, "x_rt": warm_audio / warm_s}
        out["pass_estimate_s"] = warm_s * self.audio_s / warm_audio

    def run_once(self, items, profile: bool):
        """One pass over items; returns (wall s, results in input order, stage seconds)."""
        torch, a = self.torch, self.a
        eng = self.asr.engine(profile=profile, **self.opts)
        res: list = [None] * len(items)
        _sync(torch, a.device)
        c = os.times()
        t = time.perf_counter()
        if self.batched:
            for i, r in eng.run(items):
                res[i] = r
        else:  # one input per call, as FunASR's generate() is used by default
            for j, x in enumerate(items):
                for _, r in eng.run([x]):
                    res[j] = r
        _sync(torch, a.device)
        wall = time.perf_counter() - t
        c2 = os.times()
        self.last_cpu_s = (c2.user - c.user) + (c2.system - c.system)
        self.oom += eng.oom_splits
        return wall, res, dict(eng.timer.totals)

    def timed_pass(self) -> float:
        torch, a = self.torch, self.a
        if not self.walls:
            if a.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            self.hwm_ok = reset_peak_rss()
        load = os.getloadavg()[0]
        with torch.inference_mode():
            # on CPU the stage marks cost nothing; on CUDA they synchronise, so the split gets its own pass
            w, self.res, st = self.run_once(self.inputs, profile=a.device != "cuda")
        self.walls.append(w)
        self.loads.append(load)
        self.cpus.append(self.last_cpu_s)
        self.stage_runs.append(st)
        return w

    def finish(self) -> dict:
        import resource

        torch, a, out = self.torch, self.a, self.out
        if self.asr is None or not self.walls:
            return out
        out["run_peak_rss_mb"] = proc_status_mb("VmHWM") if self.hwm_ok else None
        if a.device == "cuda":
            out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
            out["peak_cuda_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
            with torch.inference_mode():
                _, _, st = self.run_once(self.inputs, profile=True)
            out["stages_s"] = st
            out["stages_from"] = "one extra pass with the stage timer (device synchronised at each mark)"
        else:
            out["stages_s"] = self.stage_runs[self.walls.index(statistics.median_low(self.walls))]
            out["stages_from"] = "the median timed pass"
        res = self.res
        errors = [r.get("error") for r in res if "error" in r]
        wall = statistics.median(self.walls)
        out.update(
            audio_s=self.audio_s, utterances=len(self.inputs), passes=len(self.walls), wall_s=wall, walls_s=self.walls,
            cpu_s=statistics.median(self.cpus), cpus_s=self.cpus, load_avg_passes=self.loads,
            x_rt=self.audio_s / wall, errors=len(errors), first_error=errors[0] if errors else None,
            peak_rss_mb=max_rss_mb(), load_avg_end=os.getloadavg()[0],
            token_ids=[r.get("token_ids", []) for r in res], oom_splits=self.oom,
        )
        cfg, fr = self.asr.model.cfg, self.asr.frontend.cfg
        fl = {"encoder": 0, "predictor": 0, "decoder": 0, "total": 0}
        for L, ids in zip(self.lengths, out["token_ids"]):
            for k, v in model_flops(cfg, fr.feature_frames(L), len(ids)).items():
                fl[k] += v
        out["model_flops"] = fl
        return out


def worker_main(a) -> None:
    """The worker's side of the protocol: READY <json> once set up; then per line on stdin, "pass" → PASS <json: wall and CPU seconds>,
    "finish" → RESULT <json> and exit."""
    w = Worker(a)
    print("READY " + json.dumps({k: v for k, v in w.out.items()}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "pass":
            wall = w.timed_pass()
            print("PASS " + json.dumps({"wall_s": wall, "cpu_s": w.cpus[-1]}), flush=True)
        elif cmd == "finish":
            print("RESULT " + json.dumps(w.finish()), flush=True)
            return


# --- matmul rate ---------------------------------------------------------------------------------------------


def gemm_child(a) -> dict:
    """The device's matmul rate per dtype, measured here with the run's thread count: the median of a few
    square GEMMs, both as `x @ y` and as `F.linear(x, w)` (what nn.Linear runs; on CPU the two take different
    kernels for float16), keeping the faster. CUDA: 8192³, TF32 off for float32, int8 through torch._int_mm;
    CPU: 2048³ float32, 1024³ for the 16-bit types and int8."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    cuda = a.device == "cuda"
    rates = {}
    for name in a.gemm_dtypes:
        dt = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.int8}[name]
        n = 8192 if cuda else (2048 if name == "float32" else 1024)
        entry: dict = {"n": n, "tflops": None}
        try:
            if dt == torch.int8:
                x = torch.randint(-127, 127, (n, n), dtype=torch.int8, device=a.device)
                y = torch.randint(-127, 127, (n, n), dtype=torch.int8, device=a.device).t().contiguous().t()
                cands = {"_int_mm": lambda: torch._int_mm(x, y)}
            else:
                x = torch.randn(n, n, device=a.device).to(dt)
                y = torch.randn(n, n, device=a.device).to(dt)
                cands = {"mm": lambda: x @ y, "linear": lambda: F.linear(x, y)}
            for kind, fn in cands.items():
                try:
                    t = time.perf_counter()
                    fn()  # warm-up; a path this slow is not the device's matmul rate, one timing is enough
                    _sync(torch, a.device)
                    times = [time.perf_counter() - t] if time.perf_counter() - t > 1.0 else []
                    budget = time.perf_counter() + (4.0 if not cuda else 2.0)
                    while len(times) < (5 if not cuda else 20) and (len(times) < 2 or time.perf_counter() < budget):
                        t = time.perf_counter()
                        fn()
                        _sync(torch, a.device)
                        times.append(time.perf_counter() - t)
                        if times[-1] > 1.0:
                            break
                    entry[kind] = 2 * n**3 / statistics.median(times) / 1e12
                except (RuntimeError, NotImplementedError) as e:
                    entry[kind + "_error"] = str(e).splitlines()[0][:200]
            got = [v for k, v in entry.items() if k in cands]
            entry["tflops"] = max(got) if got else None
        except (RuntimeError, NotImplementedError) as e:
            entry["error"] = str(e).splitlines()[0][:200]
        rates[name] = entry
    return rates


# --- parent --------------------------------------------------------------------------------------------------


def model_dir_for(preset: str) -> str:
    """The golden checkpoint of the preset (built with the golden script when missing), else a random one."""
    cache = Path(os.environ.get("PARAFORMER_EXT_CACHE", REPO / ".cache"))
    sh = shared_dir()
    if sh is not None and (sh / "golden" / "make_checkpoint.py").exists():
        d = cache / "golden_ckpt" / preset
        if not (d / "model.pt").exists() or not (d / ".verified").exists():
            d.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, str(sh / "golden" / "make_checkpoint.py"), "--preset", preset, str(d), "--verify"],
                           check=True, stdout=subprocess.DEVNULL)
            (d / ".verified").write_text("ok\n")
        return str(d)
    from paraformer_ext.synthetic import make_random_model

    d = cache / f"random_{preset}"
    if not (d / "model.pt").exists():
        make_random_model(str(d), preset)
    return str(d)


def _child_cmd(a, extra: list[str]) -> list[str]:
    cmd = [sys.executable, os.path.abspath(__file__), "--device", a.device, "--threads", str(a.threads), "--seed", str(a.seed),
           "--min-s", str(a.min_s), "--max-s", str(a.max_s), "--inputs", a.inputs, "--repeat", str(a.repeat),
           "--warmup-n", str(a.warmup_n), "--max-system-s", str(a.max_system_s)]
    cmd += ["--n", str(a.n)] if a.n is not None else ["--total-s", str(a.total_s)]
    if a.max_batch_frames:
        cmd += ["--max-batch-frames", str(a.max_batch_frames)]
    if a.max_padding is not None:
        cmd += ["--max-padding", str(a.max_padding)]
    if a.ref_max_s:
        cmd += ["--ref-max-s", str(a.ref_max_s)]
    if a.int8_dtype:
        cmd += ["--int8-dtype", a.int8_dtype]
    if a.wav_dir:
        cmd += ["--wav-dir", a.wav_dir]
    return cmd + extra


def _run_child(cmd: list[str], timeout: float, threads: int) -> tuple[dict | None, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:g} s"
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        return None, f"failed (rc {p.returncode}): {(p.stderr or p.stdout).strip().splitlines()[-1:]}"
    return json.loads(line[7:]), ""


def machine_busy_s() -> float | None:
    """CPU seconds the whole machine has spent busy (all cores, every process), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    guest = sum(v[8:10]) if len(v) > 9 else 0  # already inside user/nice
    return (sum(v) - guest - idle) / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_cores: float, max_wait_s: float, window_s: float = 1.0) -> dict:
    """Wait until the other jobs on the machine use at most max_cores (measured over two consecutive windows; our
    workers are idle meanwhile), for at most max_wait_s. Returns what was seen."""
    t0 = time.perf_counter()
    seen, quiet = None, 0
    while True:
        b0 = machine_busy_s()
        if b0 is None:
            return {"waited_s": 0.0, "busy_cores": None}
        time.sleep(window_s)
        seen = (machine_busy_s() - b0) / window_s
        quiet = quiet + 1 if seen <= max_cores else 0
        waited = time.perf_counter() - t0
        if quiet >= 2 or waited >= max_wait_s:
            return {"waited_s": waited, "busy_cores": seen, "quiet": quiet >= 2}


class WorkerProc:
    """The parent's handle on one worker process (line protocol on stdin/stdout; stderr kept in a file)."""

    def __init__(self, cmd: list[str], threads: int):
        import tempfile

        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.err = tempfile.TemporaryFile(mode="w+")
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True, env=env, bufsize=1)

    def expect(self, prefix: str, timeout: float | None, error_prefix: str | None = None) -> str:
        """The payload of the next stdout line starting with prefix; raises RuntimeError on exit or timeout, or
        with the (JSON) payload of a line starting with error_prefix."""
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.p.stdout, selectors.EVENT_READ)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self.kill()
                    raise RuntimeError(f"timed out after {timeout:.0f} s")
                if not sel.select(left):
                    continue
                line = self.p.stdout.readline()
                if not line:
                    self.p.wait()
                    self.err.seek(0)
                    tail = [x for x in self.err.read().strip().splitlines() if x.strip()][-1:]
                    raise RuntimeError(f"worker exited (rc {self.p.returncode}): {tail}")
                if line.startswith(prefix + " "):
                    return line[len(prefix) + 1 :].strip()
                if error_prefix is not None and line.startswith(error_prefix + " "):
                    raise RuntimeError(json.loads(line[len(error_prefix) + 1 :]))
        finally:
            sel.close()

    def ask(self, cmd: str, prefix: str, timeout: float | None, error_prefix: str | None = None) -> str:
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        return self.expect(prefix, timeout, error_prefix)

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def compare(ref: list[list[int]], other: list[list[int]]) -> dict:
    """Utterances whose token ids differ from the reference's (over the utterances both ran), and the token
    edit distance summed over them relative to the reference's token count."""
    from paraformer_ext.metrics import edit_distance

    n = min(len(ref), len(other))
    diff = [i for i in range(n) if ref[i] != other[i]]
    edits = sum(edit_distance(ref[i], other[i]) for i in diff)
    toks = sum(len(ref[i]) for i in range(n))
    return {"compared": n, "mismatches": len(diff), "token_edit_rate": edits / toks if toks else 0.0, "first_mismatch": diff[0] if diff else None}


def env_info(a) -> dict:
    import torch

    import paraformer_ext

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "command": shlex.join([sys.executable] + sys.argv),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__, "cpu": cpu,
            "cpu_count": os.cpu_count(), "threads": a.threads, "device": a.device, "build_info": paraformer_ext.build_info(),
            "load_avg_start": os.getloadavg(), "quantize_api": hasattr(paraformer_ext, "quantize")}
    try:
        info["commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        info["dirty"] = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                                            capture_output=True, text=True).stdout.strip())
    except OSError:
        pass
    if a.device == "cuda":
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
                               capture_output=True, text=True).stdout.strip()
            info["gpu"] = q
        except OSError:
            info["gpu"] = None
        info["cuda"] = torch.version.cuda
    info["card"] = (info.get("gpu") or "unknown GPU").split(",")[0] if a.device == "cuda" else \
        f"{cpu}, {a.threads} of {os.cpu_count()} cores"
    return info


def _fmt(x, spec: str, dash: str = "-") -> str:
    return dash if x is None else format(x, spec)


def table(run: dict, markdown: bool = False) -> str:
    """One row per system of one preset's run."""
    gemm = run.get("gemm", {})
    head = ["system", "device", "dtype", "batching", "audio s", "passes", "wall s", "cpu s", "x real time", "vs ref", "paired", "best", "others", *[f"{s} s" for s in STAGES],
            "peak RSS MB", "run RSS MB", "weights MB", "peak CUDA MB", "TFLOP/s", "% matmul", "mismatch"]
    rows = []
    for s in run["systems"]:
        if "skipped" in s or "failed" in s:
            rows.append([s["system"], run["device"], s.get("dtype") or "-", *["-"] * 10, *["-"] * len(STAGES),
                         "-", "-", "-", "-", "-", "-", "skipped" if "skipped" in s else "failed"])
            continue
        st = s.get("stages_s", {})
        g = gemm.get("int8" if s["system"] == "engine-int8" else s["dtype"], {}).get("tflops")
        tf = s["model_flops"]["total"] / s["wall_s"] / 1e12
        cmp_ = s.get("vs_ref")
        mism = "ref" if s["system"] == REFERENCE else (f"{cmp_['mismatches']}/{cmp_['compared']}" if cmp_ else "-")
        rows.append([
            s["system"] + (" *" if s.get("subset") else ""), run["device"], s["dtype"], "batched" if s["batched"] else "1 by 1",
            f"{s['audio_s']:.0f}", str(s.get("passes", "")), f"{s['wall_s']:.2f}", _fmt(s.get("cpu_s"), ".2f"), f"{s['x_rt']:.1f}",
            _fmt(s.get("speedup"), ".2f"), _fmt(s.get("speedup_paired"), ".2f"), _fmt(s.get("speedup_best"), ".2f"),
            _fmt(statistics.median([p["others_cores"] for p in s["pass_info"]]) if s.get("pass_info") and
                 all(p.get("others_cores") is not None for p in s["pass_info"]) else None, ".2f"),
            *[_fmt(st.get(k), ".2f") for k in STAGES],
            _fmt(s.get("peak_rss_mb"), ".0f"), _fmt(s.get("run_peak_rss_mb"), ".0f"), _fmt(s.get("weights_mb"), ".0f"),
            _fmt(s.get("peak_cuda_mb"), ".0f"), f"{tf:.3g}", _fmt(100 * tf / g if g else None, ".1f"), mism,
        ])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    else:
        w = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
        lines = ["  ".join(str(h).rjust(w[i]) if i else str(h).ljust(w[i]) for i, h in enumerate(head))]
        lines += ["  ".join(str(c).rjust(w[i]) if i else str(c).ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    wl = run["workload"]
    notes = [f"preset {run['preset']}: {wl['utterances']} utterances, {wl['audio_s']:.0f} s of audio ({wl['min_s']:.1f}-"
             f"{wl['max_s']:.1f} s, mean {wl['mean_s']:.1f} s), {wl['inputs']}, from {wl['source']}; model {run['model_dir']}"]
    notes.append("matmul rate measured in this run (TFLOP/s, the better of a measurement before and after the systems; "
                 "% matmul = achieved model FLOP/s over it): " + ", ".join(
                     f"{k} {v['tflops']:.3g}" if v.get("tflops") else f"{k} n/a" for k, v in gemm.items()))
    fl = run.get("flops_per_audio_s")
    if fl:
        notes.append(f"model FLOPs per audio second (ref-fp32-1by1 tokens): {fl / 1e9:.2f} GFLOP")
    for s in run["systems"]:
        if "skipped" in s or "failed" in s:
            notes.append(f"{s['system']}: {'skipped' if 'skipped' in s else 'failed'}: {s.get('skipped') or s.get('failed')}")
        if s.get("passes_note"):
            notes.append(f"{s['system']}: {s['passes_note']}")
        if s.get("subset"):
            notes.append(f"* {s['system']} ran on a prefix of the workload: {s['subset']}")
        if s.get("vs_ref") and s["vs_ref"]["mismatches"]:
            notes.append(f"{s['system']}: {s['vs_ref']['mismatches']} of {s['vs_ref']['compared']} transcripts differ from "
                         f"{REFERENCE} (token edit rate {100 * s['vs_ref']['token_edit_rate']:.2f}%)")
        if s.get("errors"):
            notes.append(f"{s['system']}: {s['errors']} inputs failed: {s['first_error']}")
    la = [f"{s['system']} {statistics.median(s['load_avg_passes']):.2f}" for s in run["systems"] if s.get("load_avg_passes")]
    if la:
        notes.append("1-min load average, median over each system's timed passes: " + ", ".join(la))
    notes.append("vs ref: median x real time over ref-fp32-1by1's; paired: median of pass-by-pass ratios (pass r of every "
                 "system ran back to back); best: best pass over best pass; others: cores the other jobs on the machine "
                 "used during the system's passes (median)")
    if run["device"] == "cpu":
        notes.append("cpu s: process CPU time of a pass (user + system, all threads): less sensitive than wall time to other "
                     "jobs on a shared machine")
    return "\n".join(lines + [""] + notes)


def finish(run: dict) -> None:
    """Speed-ups and transcript comparisons against ref-fp32-1by1 (recomputed as systems are added)."""
    ref = next((s for s in run["systems"] if s["system"] == REFERENCE and "x_rt" in s), None)
    if ref is None:
        return
    run["flops_per_audio_s"] = ref["model_flops"]["total"] / ref["audio_s"]
    ref_rates = [ref["audio_s"] / w for w in ref["walls_s"]]
    for s in run["systems"]:
        if "x_rt" in s:
            s["speedup"] = s["x_rt"] / ref["x_rt"]
            rates = [s["audio_s"] / w for w in s["walls_s"]]
            s["x_rt_best"] = max(rates)
            s["speedup_best"] = max(rates) / max(ref_rates)
            # pass r of every system ran back to back (round-robin), so pass-by-pass ratios share the machine's state
            pairs = [x / y for x, y in zip(rates, ref_rates)]
            s["speedup_paired"] = statistics.median(pairs) if pairs else None
            if s is not ref and "token_ids" in s:
                s["vs_ref"] = compare(ref["token_ids"], s["token_ids"])


def run_preset(a, preset: str, save=lambda run: None, t_start: float | None = None) -> dict:
    """Set every system up in its own worker, then run the timed passes round-robin (pass 1 of every system,
    then pass 2, ...), then collect the results."""
    t_start = time.perf_counter() if t_start is None else t_start
    model = a.model or model_dir_for(preset)
    waves, desc, _ = build_workload(a)
    del waves
    if a.inputs == "files" and not a.wav_dir:
        a.wav_dir = str(Path(os.environ.get("PARAFORMER_EXT_CACHE", REPO / ".cache")) / f"e2e_wavs_{desc['sha256'][:12]}")
    base = _child_cmd(a, ["--model", model, "--expect-sha256", desc["sha256"]])
    systems = [s for s in a.systems if s != "engine-int8" or a.with_int8]
    dtypes = sorted({SYSTEMS[s][1] for s in systems if SYSTEMS[s][1]} | ({"int8"} if "engine-int8" in systems else set()))
    gemm_cmd = base + ["--child-gemm", "--gemm-dtypes", *dtypes]
    if a.quiet_wait_s > 0:
        wait_quiet(a.quiet_cores, a.quiet_wait_s)
    gemm, err = _run_child(gemm_cmd, 300, a.threads)
    run = {"preset": preset, "device": a.device, "model_dir": model, "workload": desc, "gemm": gemm or {"error": err}, "systems": []}
    print(f"[{preset}] workload: {desc['utterances']} utterances, {desc['audio_s']:.0f} s; matmul "
          + ", ".join(f"{k} {v.get('tflops') or 0:.3g} TFLOP/s" for k, v in (gemm or {}).items()), flush=True)

    def left() -> float | None:
        return None if not a.time_budget_s else a.time_budget_s - (time.perf_counter() - t_start)

    def tmo() -> float:
        rest = left()
        return a.system_timeout if rest is None else max(1.0, min(a.system_timeout, rest))

    rows: dict[str, dict] = {}
    workers: dict[str, WorkerProc] = {}
    passes: dict[str, int] = {}
    for name in systems:
        if name == "engine-int8":
            import paraformer_ext

            if not hasattr(paraformer_ext, "quantize"):
                rows[name] = {"system": name, "skipped": "paraformer_ext.quantize not present (the int8 issue has not landed)"}
                continue
        if left() is not None and left() < 15:
            rows[name] = {"system": name, "skipped": f"--time-budget-s {a.time_budget_s:g} spent before it was set up"}
            continue
        w = WorkerProc(base + ["--worker", "--system", name], a.threads)
        try:
            ready = json.loads(w.expect("READY", tmo()))
        except RuntimeError as e:
            w.kill()
            rows[name] = {"system": name, "failed": f"set-up: {e}"}
            continue
        rows[name] = ready
        if "skipped" in ready:
            w.kill()
            continue
        est = ready["pass_estimate_s"]
        # the reference is the baseline of every speed-up: it always gets all its passes
        n = a.repeat if not a.max_system_s or name == REFERENCE else min(a.repeat, int(a.max_system_s // est))
        if n < 1:
            w.kill()
            ready["skipped"] = (f"warm-up ran at {ready['warmup']['x_rt']:.2f}x real time: one pass over {desc['audio_s']:.0f} s "
                                f"would take ~{est:.0f} s > --max-system-s {a.max_system_s:g}")
            continue
        if n < a.repeat:
            ready["passes_note"] = f"{n} of {a.repeat} passes (--max-system-s {a.max_system_s:g}, ~{est:.0f} s a pass)"
        workers[name], passes[name] = w, n
        print(f"[{preset}] {name}: ready (load {ready['load_s']:.1f} s, warm-up {ready['warmup']['x_rt']:.1f}x real time, "
              f"{n} pass(es) of ~{est:.0f} s)", flush=True)
    for r in range(max(passes.values(), default=0)):
        for name, w in list(workers.items()):
            if passes[name] <= r:
                continue
            rest = left()
            if rest is not None and rest < rows[name]["pass_estimate_s"] * 1.5 + 10:
                passes[name] = r
                rows[name]["passes_note"] = f"{r} of {a.repeat} passes (--time-budget-s {a.time_budget_s:g})"
                continue
            try:
                gate = wait_quiet(a.quiet_cores, a.quiet_wait_s) if a.quiet_wait_s > 0 else {}
                b0 = machine_busy_s()
                got = json.loads(w.ask("pass", "PASS", tmo()))
                b1 = machine_busy_s()
                # the other jobs' CPU use while the pass ran (the parent and the idle workers use none)
                others = None if b0 is None else max(0.0, (b1 - b0 - got["cpu_s"]) / got["wall_s"])
                info = {"wall_s": got["wall_s"], "cpu_s": got["cpu_s"], "others_cores": others, "load_avg": os.getloadavg()[0],
                        "waited_quiet_s": gate.get("waited_s"), "quiet_before": gate.get("quiet")}
                rows[name].setdefault("pass_info", []).append(info)
                print(f"[{preset}] {name}: pass {r + 1}: {got['wall_s']:.2f} s ({rows[name]['audio_s'] / got['wall_s']:.1f}x real time), "
                      f"others {_fmt(others, '.2f')} cores, waited {gate.get('waited_s', 0):.0f} s for quiet", flush=True)
            except RuntimeError as e:
                rows[name]["failed"] = f"pass {r + 1}: {e}"
                workers.pop(name).kill()
    for name, w in workers.items():
        try:
            if passes[name] == 0:
                rows[name]["skipped"] = rows[name].pop("passes_note", "no pass fitted")
                w.kill()
                continue
            rows[name] = {**rows[name], **json.loads(w.ask("finish", "RESULT", tmo()))}
            res = rows[name]
            print(f"[{preset}] {name}: {res['x_rt']:.1f}x real time, median wall {res['wall_s']:.2f} s of {res['passes']}", flush=True)
        except RuntimeError as e:
            rows[name]["failed"] = f"finish: {e}"
        finally:
            w.kill()
        run["systems"] = [rows[n] for n in systems if n in rows]
        finish(run)
        save(run)
    run["systems"] = [rows[n] for n in systems if n in rows]
    if gemm and (left() is None or left() > 30):
        # measured again after the systems: on a shared machine one measurement can land in a busy moment
        if a.quiet_wait_s > 0:
            wait_quiet(a.quiet_cores, a.quiet_wait_s)
        again, _ = _run_child(gemm_cmd, 300, a.threads)
        for k, v in (again or {}).items():
            if k in gemm and v.get("tflops") is not None:
                gemm[k]["tflops_runs"] = [gemm[k].get("tflops"), v["tflops"]]
                gemm[k]["tflops"] = max(x for x in gemm[k]["tflops_runs"] if x is not None)
    finish(run)
    run["load_avg_end"] = os.getloadavg()
    return run


def _for_json(run: dict, keep_ids: bool) -> dict:
    if keep_ids:
        return run
    return {**run, "systems": [{k: v for k, v in s.items() if k != "token_ids"} for s in run["systems"]]}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2, help="torch threads (CPU); default 2")
    ap.add_argument("--preset", nargs="+", default=["large"], choices=["small", "large"])
    ap.add_argument("--model", default=None, help="model dir (default: the golden checkpoint of the preset, else a random one)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--n", type=int, default=None, help="number of utterances")
    g.add_argument("--total-s", type=float, default=None, help="total audio seconds (default 150)")
    ap.add_argument("--min-s", type=float, default=2.0)
    ap.add_argument("--max-s", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--inputs", default="arrays", choices=["arrays", "files"], help="arrays in memory, or wav files (--wav-dir)")
    ap.add_argument("--wav-dir", default=None, help="where --inputs files writes the wavs (default: under the cache)")
    ap.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    ap.add_argument("--repeat", type=int, default=3, help="timed passes per system (the median is reported)")
    ap.add_argument("--warmup-n", type=int, default=2, help="warm-up utterances (the longest one is added)")
    ap.add_argument("--max-batch-frames", type=int, default=None, help="engine padded-frame budget (default: the engine's)")
    ap.add_argument("--max-padding", type=float, default=None, help="engine padding share per batch (default: the engine's)")
    ap.add_argument("--ref-max-s", type=float, default=None,
                    help="run the one-by-one systems on a prefix of the workload holding this much audio (rates are per audio second)")
    ap.add_argument("--max-system-s", type=float, default=120.0,
                    help="skip a system whose warm-up predicts more than this many seconds for its timed passes (0: never)")
    ap.add_argument("--system-timeout", type=float, default=900.0, help="kill a system's process after this many seconds")
    ap.add_argument("--time-budget-s", type=float, default=None,
                    help="start no system once this many seconds have passed (and cut the last one's timeout to fit)")
    ap.add_argument("--quiet-wait-s", type=float, default=None,
                    help="before each pass wait up to this long for the other jobs to go quiet (default: 90 on CPU, 0 on CUDA)")
    ap.add_argument("--quiet-cores", type=float, default=0.3, help="'quiet': the other jobs use at most this many cores")
    ap.add_argument("--int8-dtype", default=None, help="dtype passed with quantize='int8' (default: float16 on CUDA, float32 on CPU)")
    ap.add_argument("--no-int8", dest="with_int8", action="store_false", help="leave engine-int8 out")
    ap.add_argument("--keep-token-ids", action="store_true", help="keep every transcript's token ids in the JSON")
    ap.add_argument("--json", default=None, help="write everything here")
    ap.add_argument("--show", default=None, help="print the tables of an existing results JSON and exit")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-gemm", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--gemm-dtypes", nargs="*", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--system", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--expect-sha256", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.n is None and a.total_s is None:
        a.total_s = 150.0
    if a.quiet_wait_s is None:
        a.quiet_wait_s = 90.0 if a.device == "cpu" else 0.0
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.show:
        data = json.loads(Path(a.show).read_text())
        for run in data["runs"]:
            print(table(run, a.markdown) + "\n")
        return 0
    if a.worker:
        worker_main(a)
        return 0
    if a.child_gemm:
        print("RESULT " + json.dumps(gemm_child(a)))
        return 0
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("--device cuda: torch sees no CUDA device", file=sys.stderr)
            return 1
    data = {"env": env_info(a), "args": {k: v for k, v in vars(a).items() if k not in ("show", "markdown")}, "runs": []}
    t_start = time.perf_counter()

    def save(run: dict) -> None:
        """Write what is done so far (a time-boxed run keeps every finished system)."""
        if not a.json:
            return
        runs = data["runs"] + [run] if run not in data["runs"] else data["runs"]
        out = {"env": {**data["env"], "load_avg_end": os.getloadavg()}, "args": data["args"], "runs": [_for_json(r, a.keep_token_ids) for r in runs]}
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1))

    for preset in a.preset:
        run = run_preset(a, preset, save, t_start)
        data["runs"].append(run)
        save(run)
        print("\n" + table(run, a.markdown) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
