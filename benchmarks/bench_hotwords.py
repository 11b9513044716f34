"""What hotwords cost (issue 14: ≤ 5 % with 1,000 hotwords at batch 1 on CPU): each wav of ../shared/audio
(synthetic speech when that folder is absent) transcribed at batch 1 by Pipeline.recognize without hotwords
and with a compiled list of N random hotwords, alternately, median of --repeat runs each.

    python benchmarks/bench_hotwords.py --preset large --hotwords 1000 --threads 2 \
        [--out benchmarks/results/hotwords_cost_cpu.json]

Rows: audio seconds, tokens, the process's CPU ms and wall ms without / with hotwords (median and min), the
overhead in %, and its two parts measured alone (least CPU ms of --repeat runs): the search (hotword_decode on
the utterance's posteriors) and the decoder's full log-posteriors that the search needs (decode_logits +
log_softmax instead of the fused projection + argmax); `components_pct` is their sum over the plain run's time.
CPU time is the headline: on a shared machine wall time mostly measures the other jobs. The graph is compiled
once per list (as load() and a server connection do), timed separately.

--preset large (the default) has random weights: its posteriors are nearly flat, so every hotword's first token
lies within the search margin at every position, the search's worst case. --preset shipped times the shipped
trained model on its held-out examples instead: peaked posteriors, but a model 100x cheaper to run, so the same
search is a larger share. --lm auto (with --preset shipped: its language model) times hotwords on top of LM
decoding instead of greedy decoding; the search component is then the LM search with the list minus without it.
Recall and precision: benchmarks/hotword_recall.py.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, shared_dir  # noqa: E402


def random_hotwords(tokens, n: int, seed: int) -> dict[str, int]:
    """n distinct words of 2-5 CJK tokens of the vocabulary, weights 1-100."""
    rng = random.Random(seed)
    cjk = [t for t in tokens if len(t) == 1 and "\u4e00" <= t <= "\u9fff"]
    out: dict[str, int] = {}
    while len(out) < n:
        out["".join(rng.choice(cjk) for _ in range(rng.randint(2, 5)))] = rng.randint(1, 100)
    return out


def waves(sr: int) -> list[tuple[str, np.ndarray]]:
    from paraformer_ext.audio import load_audio

    sh = shared_dir()
    if sh is not None and (sh / "audio").is_dir():
        return [(p.stem, load_audio(str(p), target_sr=sr).numpy()) for p in sorted((sh / "audio").glob("*.wav"))]
    from paraformer_ext.synthetic import synthetic_speech

    return [(f"synthetic_{s}s", synthetic_speech(s, i)) for i, s in enumerate((5.0, 10.0))]


def ms(fn) -> tuple[float, float]:
    """(wall ms, this process's CPU ms): on a machine shared with other jobs the CPU time of our own threads
    is far less disturbed than the wall time, which waits whenever the others hold the cores."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - w) * 1e3, (time.process_time() - c) * 1e3


def best_cpu(fn, repeat: int) -> float:
    """A component alone: the least CPU ms of `repeat` runs (its cost without interference)."""
    return min(ms(fn)[1] for _ in range(repeat))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="large", choices=["tiny", "small", "large", "shipped"],
                    help="a random-weight geometry, or the shipped trained model on its held-out examples")
    ap.add_argument("--hotwords", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lm", default="none", help="as load(lm=): none (default: greedy decoding), auto, or an ARPA file")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    import paraformer_ext
    from paraformer_ext.ops.hotwords import hotword_decode_fn
    from paraformer_ext.paths import cache_dir
    from paraformer_ext.synthetic import make_random_model

    if a.preset == "shipped":
        from paraformer_ext.audio import load_audio
        from paraformer_ext.default_model import examples

        asr = paraformer_ext.load(kernels=True, lm=a.lm)
        inputs = [(r["key"], load_audio(r["source"], target_sr=asr.pipeline.sample_rate).numpy()) for r in examples()]
    else:
        model_dir = cache_dir() / "bench_models" / a.preset
        if not (model_dir / "model.pt").exists():
            make_random_model(model_dir, a.preset)
        asr = paraformer_ext.load(model_dir, kernels=True, lm=a.lm)
        inputs = waves(asr.pipeline.sample_rate)
    p = asr.pipeline
    words = random_hotwords(p.tokens, a.hotwords, a.seed)
    t = time.perf_counter()
    graph = p.compile_hotwords(words)
    compile_ms = (time.perf_counter() - t) * 1e3

    rows = []
    for name, w in inputs:
        x = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))[None]
        n = torch.tensor([x.shape[1]])
        plain = lambda: p.recognize(x, n)  # noqa: E731
        hot = lambda: p.recognize(x, n, hotwords=graph)  # noqa: E731
        plain(), hot()  # warm-up
        runs = {"plain": [], "hotwords": []}
        for _ in range(a.repeat):  # alternate, so that a change in the machine's load hits both alike
            runs["plain"].append(ms(plain))
            runs["hotwords"].append(ms(hot))
        feats, flens = p.features(x, n)
        with torch.no_grad():
            out = p.model.greedy(feats, flens, log_posteriors=True)
            N = int(out.token_num[0])
            logp = out.log_posteriors[0, :N].contiguous()
            enc, emb, tn = out.encoder_out, out.acoustic_embeds, out.token_num
            fused = best_cpu(lambda: p.model.decode_argmax(enc, flens, emb, tn), a.repeat)
            full = best_cpu(lambda: torch.log_softmax(p.model.decode_logits(enc, flens, emb, tn).float(), -1), a.repeat)
        if asr.lm is not None:  # what the list adds to the LM search
            search = (best_cpu(lambda: asr.lm.decode(logp, graph), a.repeat)
                      - best_cpu(lambda: asr.lm.decode(logp), a.repeat))
        else:
            search = best_cpu(lambda: hotword_decode_fn(logp, graph.child_offsets, graph.edges, graph.nodes,
                                                        graph.node_scores, graph.beam, graph.topk, graph.margin,
                                                        graph.eos_id), a.repeat)
        row = dict(wav=name, audio_s=round(x.shape[1] / p.sample_rate, 2), tokens=N)
        for k, v in runs.items():
            row[f"{k}_cpu_ms_median"] = round(statistics.median(c for _, c in v), 1)
            row[f"{k}_cpu_ms_min"] = round(min(c for _, c in v), 1)
            row[f"{k}_wall_ms_median"] = round(statistics.median(w for w, _ in v), 1)
            row[f"{k}_wall_ms_min"] = round(min(w for w, _ in v), 1)
        pct = lambda key: round(100 * (row[f"hotwords_{key}"] - row[f"plain_{key}"]) / row[f"plain_{key}"], 2)  # noqa: E731
        row.update(overhead_pct_cpu_median=pct("cpu_ms_median"), overhead_pct_cpu_min=pct("cpu_ms_min"),
                   overhead_pct_wall_median=pct("wall_ms_median"), search_cpu_ms=round(search, 3),
                   log_posteriors_extra_cpu_ms=round(full - fused, 3),
                   components_pct=round(100 * (search + full - fused) / row["plain_cpu_ms_min"], 2),
                   runs_wall_cpu_ms={k: [[round(w, 1), round(c, 1)] for w, c in v] for k, v in runs.items()})
        rows.append(row)
        print(f"{name:>12} {row['audio_s']:6.2f} s {N:4d} tokens  CPU ms plain/hotwords median "
              f"{row['plain_cpu_ms_median']:.0f}/{row['hotwords_cpu_ms_median']:.0f} ({row['overhead_pct_cpu_median']:+.2f} %), "
              f"min {row['plain_cpu_ms_min']:.0f}/{row['hotwords_cpu_ms_min']:.0f} ({row['overhead_pct_cpu_min']:+.2f} %); "
              f"wall median {row['overhead_pct_wall_median']:+.2f} %; search {search:.2f} ms + log-posteriors "
              f"{full - fused:+.2f} ms = {row['components_pct']:.2f} %", flush=True)
    total = {k: sum(r[f"{k}_cpu_ms_median"] for r in rows) for k in ("plain", "hotwords")}
    res = {
        "meta": {
            "command": "benchmarks/bench_hotwords.py " + " ".join(sys.argv[1:]),
            "preset": a.preset, "hotwords": a.hotwords, "kept": len(graph), "graph_states": int(graph.nodes.shape[0]),
            "token_bonus": graph.token_bonus, "beam": graph.beam, "topk": graph.topk, "margin": graph.margin,
            "compile_ms": round(compile_ms, 1), "threads": a.threads, "repeat": a.repeat, "device": "cpu",
            "lm": None if asr.lm is None else repr(asr.lm),
            "model": ("the shipped model (trained) on its held-out examples" if a.preset == "shipped" else
                      "random weights (flat posteriors: the search's worst case)"),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "load_avg_at_end": list(os.getloadavg()),
        },
        "rows": rows,
        "overhead_pct_cpu_median_all": round(100 * (total["hotwords"] - total["plain"]) / total["plain"], 2),
        "components_pct_all": round(sum(r["search_cpu_ms"] + r["log_posteriors_extra_cpu_ms"] for r in rows)
                                    / sum(r["plain_cpu_ms_min"] for r in rows) * 100, 2),
    }
    print(f"overall: CPU time {res['overhead_pct_cpu_median_all']:+.2f} % (medians), components "
          f"{res['components_pct_all']:.2f} %, with {len(graph)} hotwords ({graph.nodes.shape[0]} states); "
          f"compile {compile_ms:.0f} ms once")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
