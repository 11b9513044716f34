"""Scoring a model on the synthetic corpus: CER (overall, by voice, speed and noise), the homophone error rate,
and timestamp accuracy on speech whose syllable boundaries are known."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..metrics import align

SPEED_BINS = ((120, 149), (150, 179), (180, 210))


def read_rows(jsonl) -> list[dict]:
    with open(jsonl, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _readings(ch: str, cache: dict) -> set[str]:
    if ch not in cache:
        from pypinyin import Style, pinyin

        cache[ch] = set(pinyin(ch, style=Style.TONE3, heteronym=True, neutral_tone_with_five=True)[0])
    return cache[ch]


def score(rows: list[dict], hyps: list[str]) -> dict:
    """rows: the corpus jsonl entries (target, pinyin, voice, speed, noise); hyps: recognized texts, in order.
    A substitution is a homophone error when a reading of the hypothesis character is the reference
    character's syllable in its sentence (same syllable and tone: identical sound for espeak-ng)."""
    cache: dict = {}
    groups: dict[str, dict] = defaultdict(lambda: {"errors": 0, "chars": 0, "utterances": 0})
    tot = {"sub": 0, "del": 0, "ins": 0, "homophone": 0, "chars": 0, "exact": 0}
    examples = []
    for r, h in zip(rows, hyps, strict=True):
        ref, hyp = r["target"], "".join(h.split())
        syl = r["pinyin"].split()
        ops = align(ref, hyp)
        e = {"sub": 0, "del": 0, "ins": 0, "homophone": 0}
        for op, i, j in ops:
            if op == "=":
                continue
            e[op] += 1
            if op == "sub" and syl[i] in _readings(hyp[j], cache):
                e["homophone"] += 1
        n_err = e["sub"] + e["del"] + e["ins"]
        for k in e:
            tot[k] += e[k]
        tot["chars"] += len(ref)
        tot["exact"] += n_err == 0
        if n_err and len(examples) < 20:
            examples.append({"key": r["key"], "ref": ref, "hyp": hyp})
        speed = next(f"{lo}-{hi}" for lo, hi in SPEED_BINS if lo <= r["speed"] <= hi)
        for g in (f"voice:{r['voice']}", f"speed:{speed}", f"noise:{r['noise'] or 'none'}"):
            groups[g]["errors"] += n_err
            groups[g]["chars"] += len(ref)
            groups[g]["utterances"] += 1
    chars = max(tot["chars"], 1)
    errors = tot["sub"] + tot["del"] + tot["ins"]
    by = defaultdict(dict)
    for g, v in sorted(groups.items()):
        kind, name = g.split(":", 1)
        by[kind][name] = {"cer": round(v["errors"] / max(v["chars"], 1), 4), "utterances": v["utterances"]}
    return {"utterances": len(rows), "chars": tot["chars"], "cer": round(errors / chars, 4),
            "sub": tot["sub"], "del": tot["del"], "ins": tot["ins"],
            "homophone_error_rate": round(tot["homophone"] / chars, 4),
            "homophone_share_of_substitutions": round(tot["homophone"] / max(tot["sub"], 1), 4),
            "sentence_accuracy": round(tot["exact"] / max(len(rows), 1), 4),
            "by_voice": by["voice"], "by_speed": by["speed"], "by_noise": by["noise"], "examples": examples}


def evaluate(recognizer, corpus_dir, split: str = "test", limit: int | None = None, progress: bool = False) -> dict:
    """Transcribe a corpus split with `recognizer` (a paraformer_ext Recognizer) and score it."""
    corpus_dir = Path(corpus_dir)
    rows = read_rows(corpus_dir / f"{split}.jsonl")[:limit]
    res = recognizer.transcribe([str(corpus_dir / r["source"]) for r in rows], progress=progress)
    bad = [r for r in res if "error" in r]
    if bad:
        raise RuntimeError(f"{len(bad)} {split} files could not be transcribed, first: {bad[0]}")
    return score(rows, [r["text"] for r in res])


# --- timestamps --------------------------------------------------------------------------------------------

def _trim(x: np.ndarray, sr: int, rel_db: float = -35.0) -> np.ndarray:
    """x without leading/trailing frames (10 ms) quieter than rel_db below its loudest frame."""
    hop = sr // 100
    n = len(x) // hop
    if n == 0:
        return x
    e = 10 * np.log10(np.maximum((x[: n * hop].reshape(n, hop) ** 2).mean(1), 1e-12))
    on = np.nonzero(e > e.max() + rel_db)[0]
    return x[on[0] * hop: (on[-1] + 1) * hop]


def syllable_by_syllable(syllables: list[str], cond: dict, seed: int, sr: int = 16000) -> tuple[np.ndarray, list[list[int]]]:
    """Each syllable synthesized alone (`corpus.synthesize` with cond, noise off), trimmed of its silence,
    joined with 40-160 ms pauses: audio and the true [start_ms, end_ms] of every syllable. Noise is added
    afterwards at cond's SNR so the trimming sees clean speech."""
    from .corpus import add_noise, synthesize

    rng = np.random.default_rng(seed)
    clean = {**cond, "noise": None}
    parts, bounds, t = [np.zeros(int(rng.integers(4, 16)) * sr // 100, np.float32)], [], 0
    t = len(parts[0])
    for s in syllables:
        x = _trim(synthesize([s], clean), sr)
        bounds.append([round(t * 1000 / sr), round((t + len(x)) * 1000 / sr)])
        gap = np.zeros(int(rng.integers(4, 17)) * sr // 100, np.float32)
        parts += [x, gap]
        t += len(x) + len(gap)
    return add_noise(np.concatenate(parts), cond, rng), bounds


def timestamp_error(recognizer, rows: list[dict], variants: list[str], seed: int = 0) -> dict:
    """Mean absolute start and end error (ms) of the recognizer's per-character timestamps against the true
    syllable boundaries, over the characters the recognizer got right (aligned "=")."""
    from .corpus import draw_condition

    starts, ends, total, matched = [], [], 0, 0
    for k, r in enumerate(rows):
        cond = draw_condition(seed, "timestamps", k, variants)
        cond["effects"] = ["gain", "-3"]  # no reverb or band limit: the boundaries must stay where they are
        audio, truth = syllable_by_syllable(r["pinyin"].split(), cond, seed * 100003 + k)
        res = recognizer.transcribe(audio, timestamps=True)[0]
        hyp, ts = "".join(res["text"].split()), res.get("timestamp") or []
        total += len(r["target"])
        if len(ts) != len(hyp):
            continue  # timestamps are per token; a mismatch would pair the wrong ones
        for op, i, j in align(r["target"], hyp):
            if op == "=":
                starts.append(ts[j][0] - truth[i][0])
                ends.append(ts[j][1] - truth[i][1])
                matched += 1
    return {"utterances": len(rows), "chars": total, "matched_chars": matched,
            "mean_abs_start_ms": _stat(np.mean, np.abs(starts)), "mean_abs_end_ms": _stat(np.mean, np.abs(ends)),
            "median_abs_start_ms": _stat(np.median, np.abs(starts)), "median_abs_end_ms": _stat(np.median, np.abs(ends)),
            # signed (timestamp - truth): a systematic lead or lag shows here, not in the absolute error
            "mean_start_ms": _stat(np.mean, starts), "mean_end_ms": _stat(np.mean, ends)}


def _stat(fn, x) -> float | None:
    return round(float(fn(x)), 1) if len(x) else None
