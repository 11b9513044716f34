"""Which espeak-ng voice variants carry Mandarin's tones, at which SSML pitch range (issue 12).

    .venv/bin/python benchmarks/espeak_tones.py [--out benchmarks/results/espeak_tones.json]

For every variant the corpus knows (kept and dropped), the tone-2 rise and tone-4 fall in semitones
(paraformer_ext/data/tones.py) at prosody range medium (espeak-ng's default), high and x-high. A variant is kept
(corpus.VARIANTS) when both exceed 1.5 semitones at one of the ranges the corpus draws (corpus.PITCH_RANGES:
high, x-high); the tracker is rough (x-high tone-4 tails go creaky and read as no fall), so one range is enough.
One exception, kept for the corpus's reproducibility: Michael was dropped on a first pass with a rougher tracker
and passes narrowly at high here (+1.9 / -2.2).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from paraformer_ext.data import corpus, tones  # noqa: E402

RANGES = ("medium", "high", "x-high")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/espeak_tones.json")
    ap.add_argument("--speed", type=int, default=160)
    args = ap.parse_args()
    corpus.check_tools()
    have = set(corpus.installed_variants()) | set(corpus.TONELESS_VARIANTS)
    rows = {}
    print(f"{'variant':10s} {'kept':5s} " + "  ".join(f"{r:>15s}" for r in RANGES) + "   (tone-2 rise / tone-4 fall, st)")
    for v in [*corpus.VARIANTS, *corpus.TONELESS_VARIANTS]:
        if v not in have:
            continue
        rows[v] = {"kept": v in corpus.VARIANTS}
        for r in RANGES:
            rise, fall = tones.tone_excursions(v, r, args.speed)
            rows[v][r] = {"rise2": round(rise, 2), "fall4": round(fall, 2)}
        print(f"{v:10s} {'yes' if rows[v]['kept'] else 'no':5s} "
              + "  ".join(f"{rows[v][r]['rise2']:+6.1f} / {rows[v][r]['fall4']:+5.1f}" for r in RANGES), flush=True)
    Path(args.out).write_text(json.dumps({"speed": args.speed, "syllables": tones.SYLLABLES,
                                          "corpus_ranges": corpus.PITCH_RANGES, "variants": rows}, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
