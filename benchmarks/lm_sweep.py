"""Choosing the shipped language model: validation CER of the default model's posteriors searched with token
n-gram LMs of the corpus's training text, by order and weight (the model runs once; each LM is estimated
as `paraformer-ext train-lm` does).

    .venv/bin/python benchmarks/lm_sweep.py --corpus RUNS/corpus100 [--model DIR] \
        [--orders 2,3,4,5] [--weights 0.6,0.8,1.0,1.2,1.4] [--out benchmarks/results/lm_sweep.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO  # noqa: E402
from hotword_recall import posteriors  # noqa: E402


def main() -> int:
    from paraformer_ext.data.evaluate import read_rows, score
    from paraformer_ext.lm import NgramLM
    from paraformer_ext.lm_decode import LMDecoder
    from paraformer_ext.recognizer import load
    from paraformer_ext.text import postprocess

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True, help="the make-corpus directory the model was trained on")
    ap.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    ap.add_argument("--split", default="valid")
    ap.add_argument("--orders", default="2,3,4,5")
    ap.add_argument("--weights", default="0.6,0.8,1.0,1.2,1.4")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/lm_sweep.json"))
    a = ap.parse_args()
    asr = load(a.model, lm=None)
    rows = read_rows(a.corpus / f"{a.split}.jsonl")
    t0 = time.perf_counter()
    logps = posteriors(asr, a.corpus, rows)
    print(f"{len(rows)} {a.split} sentences, model run {time.perf_counter() - t0:.1f} s", flush=True)
    tokens = asr.tokens
    train = list(NgramLM.token_sentences((r["target"] for r in read_rows(a.corpus / "train.jsonl")), tokens))

    def cer(decode) -> dict:
        return score(rows, [postprocess(decode(lp).tolist(), tokens)["text"] for lp in logps])

    greedy = cer(lambda lp: lp.argmax(-1))
    print(f"greedy: CER {greedy['cer']:.2%}", flush=True)
    table = []
    for order in (int(x) for x in a.orders.split(",")):
        lm = NgramLM.estimate(train, order=order, vocab=list(tokens))
        with tempfile.TemporaryDirectory() as d:
            size = lm.write_arpa(Path(d) / "lm.arpa.gz").stat().st_size
        for w in (float(x) for x in a.weights.split(",")):
            t = time.perf_counter()
            dec = LMDecoder(lm, tokens, w)
            m = cer(lambda lp: dec.decode(lp)[0])
            secs = time.perf_counter() - t
            table.append({"order": order, "ngrams": len(lm), "arpa_gz_mb": round(size / 1e6, 2), "weight": w,
                          "cer": m["cer"], "homophone_error_rate": m["homophone_error_rate"],
                          "search_ms_per_sentence": round(1e3 * secs / len(rows), 2)})
            print(f"order {order} ({len(lm)} n-grams, {size / 1e6:.1f} MB) weight {w:g}: CER {m['cer']:.2%}",
                  flush=True)
    best = min(table, key=lambda r: r["cer"])
    out = {"command": "benchmarks/lm_sweep.py " + " ".join(sys.argv[1:]), "model": a.model or "the shipped model",
           "split": a.split, "sentences": len(rows), "greedy_cer": greedy["cer"], "table": table, "best": best,
           "torch": torch.__version__}
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"best: order {best['order']}, weight {best['weight']:g}: {best['cer']:.2%}; wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
