"""`paraformer-ext demo`: the shipped model transcribes held-out synthetic sentences (expected text beside the
recognized one, with timestamps), then the compiled kernels and the plain PyTorch reference are timed on them."""
from __future__ import annotations

import time

import soundfile as sf


def _timed(asr, paths, min_s: float = 1.0) -> tuple[float, int, list]:
    """Seconds per pass over `paths` (repeated until min_s elapsed, after a warm-up) and the results."""
    res = asr.transcribe(paths, timestamps=True)
    n, t0 = 0, time.perf_counter()
    while True:
        res = asr.transcribe(paths, timestamps=True)
        n += 1
        if time.perf_counter() - t0 >= min_s:
            return (time.perf_counter() - t0) / n, n, res


def run_shipped_demo(a) -> int:
    from ._ext import use_kernels
    from .cli import _lm_kwargs
    from .default_model import default_model_dir, examples
    from .recognizer import load

    rows = examples()
    paths = [r["source"] for r in rows]
    audio_s = sum(sf.info(p).duration for p in paths)
    print(f"paraformer_ext demo: the shipped model ({default_model_dir()}) on {len(rows)} held-out synthetic "
          f"sentences ({audio_s:.1f} s; it knows only espeak-ng speech, see its MODEL_CARD.md)\n")
    kernels = use_kernels(False if a.no_kernels else None, a.device)
    runs = {}
    for name, k in ([("kernels", True)] if kernels else []) + [("reference", False)]:
        asr = load(None, device=a.device, dtype=a.dtype, kernels=k, cif_threshold=a.cif_threshold, **_lm_kwargs(a))
        runs[name] = _timed(asr, paths)
    main = runs["kernels" if kernels else "reference"][2]
    right = 0
    for r, h in zip(rows, main):
        ok = h["text"].replace(" ", "") == r["target"]
        right += ok
        print(f"{r['key']}  expected:   {r['target']}")
        print(f"{' ' * len(r['key'])}  recognized: {h['text'].replace(' ', '')}  {'(exact)' if ok else '(differs)'}")
        print(f"{' ' * len(r['key'])}  timestamps: " + " ".join(
            f"{c}[{s}-{e}]" for c, (s, e) in zip(h["text"].replace(" ", ""), h["timestamp"])) + "\n")
    print(f"{right}/{len(rows)} exactly right\n")
    for name, (sec, n, _) in runs.items():
        print(f"{name:>9}: {sec * 1000:.0f} ms per pass over {audio_s:.1f} s of audio ({audio_s / sec:.0f}x real time; "
              f"mean of {n} passes) on {a.device}, {a.dtype}")
    if len(runs) == 2:
        same = sum(x["token_ids"] == y["token_ids"] for x, y in zip(runs["kernels"][2], runs["reference"][2]))
        print(f"kernels vs reference: {runs['reference'][0] / runs['kernels'][0]:.2f}x faster, identical tokens for "
              f"{same}/{len(rows)} sentences")
    print(f"\nTry: paraformer-ext transcribe {paths[0]} --timestamps")
    return 0
