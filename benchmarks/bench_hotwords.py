"""What hotwords cost (issue 14: ≤ 5 % with 1,000 hotwords at batch 1 on CPU): each wav of ../shared/audio
(synthetic speech when that folder is absent) transcribed at batch 1 by Pipeline.recognize without hotwords
and with a compiled list of N random hotwords, alternately, median of --repeat runs each.

    python benchmarks/bench_hotwords.py --preset large --hotwords 1000 --threads 2 \
        [--out benchmarks/results/hotwords_cost_cpu.json]

Rows: audio seconds, tokens, median ms without / with hotwords, the overhead in %, and its two parts measured
alone: the search (hotword_decode on the utterance's posteriors) and the decoder's full log-posteriors that
the search needs (decode_logits + log_softmax instead of the fused projection + argmax). The graph is compiled
once per list (as load() and a server connection do), timed separately.

The model has random weights (a trained one does not exist yet): its posteriors are nearly flat, so every
hotword's first token lies within the search margin at every position, the search's worst case; a trained
model's peaked posteriors leave far fewer candidates. Recall and precision need that trained model and are not
measured here.
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


def ms(fn) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="large", choices=["tiny", "small", "large"])
    ap.add_argument("--hotwords", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    import paraformer_ext
    from paraformer_ext.ops.hotwords import hotword_decode_fn
    from paraformer_ext.paths import cache_dir
    from paraformer_ext.synthetic import make_random_model

    model_dir = cache_dir() / "bench_models" / a.preset
    if not (model_dir / "model.pt").exists():
        make_random_model(model_dir, a.preset)
    asr = paraformer_ext.load(model_dir, kernels=True)
    p = asr.pipeline
    words = random_hotwords(p.tokens, a.hotwords, a.seed)
    t = time.perf_counter()
    graph = p.compile_hotwords(words)
    compile_ms = (time.perf_counter() - t) * 1e3

    rows = []
    for name, w in waves(p.sample_rate):
        x = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))[None]
        n = torch.tensor([x.shape[1]])
        plain = lambda: p.recognize(x, n)  # noqa: E731
        hot = lambda: p.recognize(x, n, hotwords=graph)  # noqa: E731
        plain(), hot()  # warm-up
        t_plain, t_hot = [], []
        for _ in range(a.repeat):  # alternate, so that a change in the machine's load hits both alike
            t_plain.append(ms(plain))
            t_hot.append(ms(hot))
        feats, flens = p.features(x, n)
        with torch.no_grad():
            out = p.model.greedy(feats, flens, log_posteriors=True)
            N = int(out.token_num[0])
            logp = out.log_posteriors[0, :N].contiguous()
            enc, pred_embeds, tn = out.encoder_out, out.acoustic_embeds, out.token_num
            fused = statistics.median(ms(lambda: p.model.decode_argmax(enc, flens, pred_embeds, tn)) for _ in range(a.repeat))
            full = statistics.median(ms(lambda: torch.log_softmax(p.model.decode_logits(enc, flens, pred_embeds, tn).float(), -1))
                                     for _ in range(a.repeat))
        search = statistics.median(ms(lambda: hotword_decode_fn(logp, graph.child_offsets, graph.edges, graph.nodes,
                                                                graph.node_scores, graph.beam, graph.topk, graph.margin,
                                                                graph.eos_id)) for _ in range(a.repeat))
        mp, mh = statistics.median(t_plain), statistics.median(t_hot)
        row = dict(wav=name, audio_s=round(x.shape[1] / p.sample_rate, 2), tokens=N, plain_ms=round(mp, 2),
                   hotwords_ms=round(mh, 2), overhead_pct=round(100 * (mh - mp) / mp, 2), search_ms=round(search, 3),
                   log_posteriors_extra_ms=round(full - fused, 3), plain_ms_all=[round(v, 2) for v in t_plain],
                   hotwords_ms_all=[round(v, 2) for v in t_hot])
        rows.append(row)
        print(f"{name:>12} {row['audio_s']:6.2f} s {N:4d} tokens  plain {mp:8.1f} ms  hotwords {mh:8.1f} ms  "
              f"{row['overhead_pct']:+6.2f} %  (search {search:.2f} ms, log-posteriors +{full - fused:.2f} ms)",
              flush=True)
    total_plain = sum(r["plain_ms"] for r in rows)
    total_hot = sum(r["hotwords_ms"] for r in rows)
    res = {
        "meta": {
            "command": "benchmarks/bench_hotwords.py " + " ".join(sys.argv[1:]),
            "preset": a.preset, "hotwords": a.hotwords, "kept": len(graph), "graph_states": int(graph.nodes.shape[0]),
            "token_bonus": graph.token_bonus, "beam": graph.beam, "topk": graph.topk, "margin": graph.margin,
            "compile_ms": round(compile_ms, 1), "threads": a.threads, "repeat": a.repeat, "device": "cpu",
            "model": "random weights (flat posteriors: the search's worst case)",
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "load_avg_at_end": list(os.getloadavg()),
        },
        "rows": rows,
        "overhead_pct_all": round(100 * (total_hot - total_plain) / total_plain, 2),
    }
    print(f"overall: {res['overhead_pct_all']:+.2f} % with {len(graph)} hotwords ({graph.nodes.shape[0]} states), "
          f"compile {compile_ms:.0f} ms once")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
