"""A synthetic Mandarin speech corpus, made offline: jieba's word list → sentences → tone-numbered pinyin
(pypinyin) → espeak-ng's `cmn-latn-pinyin` voice → sox effects and noise → FLAC + FunASR jsonl lists.

Why this route (training.md §5): espeak-ng cannot read Hanzi (most characters come out as English-rule
speech), but it speaks every tonal pinyin syllable of the top 3000 characters with Mandarin phonemes. Each
syllable is checked once with `espeak-ng -q -x`: its phonemes must carry a tone and no `(en)` switch.

Reproducible: an utterance's text, voice, speed, pitch, effects and noise are functions of (seed, split,
index) only, so the corpus is the same with any number of worker processes. espeak-ng and sox are called as
system programs (Debian packages; espeak-ng is GPL-3.0 and nothing of it is bundled).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("train", "valid", "test")
SAMPLE_RATE = 16000
MIN_CHARS, MAX_CHARS = 8, 16
SECONDS_PER_CHAR = 0.32  # measured mean (training.md §5): sizes the number of utterances for --hours
VOCAB_SIZE = 3000
MIN_WORD_FREQ = 50
# espeak-ng variants that are not MBROLA voices and do not whisper or croak (unintelligible on purpose), less
# those whose tones do not come through (benchmarks/espeak_tones.py: tone 2 rises < 1.5 or tone 4 falls < 1.5
# semitones at both SSML ranges the corpus uses; e.g. Alex's pitch span is 105-115 Hz, aunty's is inverted;
# Michael's exception is in that script):
# Mandarin is tonal, and a corpus of flattened tones teaches a model to guess them (33 % of characters did).
# The corpus uses those of them that the installed espeak-ng has.
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
            "klatt3", "klatt4", "klatt6", "adam", "Alicia", "antonio", "belinda", "benjamin", "caleb", "david",
            "Denis", "edward", "Gene", "grandma", "Henrique", "Hugo", "iven", "iven2", "john", "Lee", "linda",
            "Marco", "michel", "Mike", "norbert", "steph", "steph2", "travis", "victor", "zac")
TONELESS_VARIANTS = ("Alex", "Andy", "Annie", "aunty", "boris", "grandpa", "gustave", "Jacky", "max", "Michael",
                     "paul", "pedro", "quincy", "rob", "robert")
# espeak-ng's default tone excursions are 2-3 semitones (tone 2 of `ma2`: 151 -> 185 Hz on f2); real Mandarin's
# span about an octave. SSML's prosody range widens them 1.5x ("high") and 2x ("x-high").
PITCH_RANGES = ("high", "x-high")
SPEED_RANGE = (120, 180)  # words/min; faster than ~180 squeezes a syllable's contour into < 0.2 s
INSTALL = ("apt-get install -y espeak-ng sox (Debian/Ubuntu), then pip install 'paraformer_ext[corpus]' "
           "for pypinyin and jieba")


class CorpusToolError(RuntimeError):
    """A program or library the corpus tool needs is missing; the message says how to install it."""


def check_tools() -> None:
    missing = [p for p in ("espeak-ng", "sox") if shutil.which(p) is None]
    for mod in ("pypinyin", "jieba"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(f"python package {mod}")
    if missing:
        raise CorpusToolError(f"make-corpus needs {', '.join(missing)}: {INSTALL}")


def installed_variants() -> list[str]:
    out = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True, check=True).stdout
    # the File column ("!v/NAME") is what `-v LANG+NAME` takes; the VoiceName column differs ("Auntie")
    have = {tok[3:] for line in out.splitlines()[1:] for tok in line.split() if tok.startswith("!v/")}
    got = [v for v in VARIANTS if v in have]
    if not got:
        raise CorpusToolError(f"espeak-ng has none of the voice variants {VARIANTS[:5]}...; reinstall espeak-ng")
    return got


# --- text ----------------------------------------------------------------------------------------------

def _is_han(ch: str) -> bool:
    return 0x4E00 <= ord(ch) <= 0x9FFF


@dataclass
class Lexicon:
    chars: list[str]  # the vocabulary, most frequent first
    words: list[str]  # words made only of vocabulary characters
    weights: np.ndarray  # sampling probability of each word (∝ freq^0.5)


def jieba_entries() -> list[tuple[str, int, str]]:
    """(word, frequency, part-of-speech tag) of jieba's dict.txt (MIT), Han-only words."""
    import jieba

    out = []
    with open(Path(jieba.__file__).parent / "dict.txt", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and all(_is_han(c) for c in parts[0]):
                out.append((parts[0], int(parts[1]), parts[2] if len(parts) > 2 else ""))
    return out


def load_lexicon(vocab_size: int = VOCAB_SIZE, min_freq: int = MIN_WORD_FREQ) -> Lexicon:
    """jieba's dict.txt (MIT): character frequencies weighted by word frequency → the top `vocab_size`
    characters; words of frequency ≥ min_freq made of them only."""
    entries = [(w, n) for w, n, _ in jieba_entries()]
    cf: Counter = Counter()
    for w, n in entries:
        for c in w:
            cf[c] += n
    chars = [c for c, _ in sorted(cf.items(), key=lambda kv: (-kv[1], kv[0]))[:vocab_size]]
    vocab = set(chars)
    words = sorted({w for w, n in entries if n >= min_freq and len(w) <= MAX_CHARS and set(w) <= vocab})
    freq = dict(entries)
    wts = np.array([freq[w] for w in words], dtype=np.float64) ** 0.5
    return Lexicon(chars, words, wts / wts.sum())


def tokens_for(lex: Lexicon) -> list[str]:
    """FunASR's char token list: <blank> <s> </s>, the characters, <unk>."""
    return ["<blank>", "<s>", "</s>", *lex.chars, "<unk>"]


def _rng(seed: int, *tags) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(str(t).encode()) for t in tags)])


def make_sentence(lex: Lexicon, rng: np.random.Generator) -> str:
    """Words sampled ∝ freq^0.5 until the text reaches a length drawn from 8–16 characters: no sentence
    context, real word-internal context (training.md §5)."""
    target = int(rng.integers(MIN_CHARS, MAX_CHARS + 1))
    text = ""
    while len(text) < target:
        w = lex.words[int(rng.choice(len(lex.words), p=lex.weights))]
        if len(text) + len(w) <= MAX_CHARS:
            text += w
    return text


class Pinyin:
    """Text → tone-numbered syllables espeak-ng speaks as Mandarin; None when any character is not
    readable that way. Each syllable is checked once against espeak-ng's phoneme output."""

    def __init__(self):
        self.ok: dict[str, bool] = {}

    def _check(self, syl: str) -> bool:
        if syl not in self.ok:
            ph = subprocess.run(["espeak-ng", "-q", "-x", "-v", "cmn-latn-pinyin", syl], capture_output=True,
                                text=True).stdout
            self.ok[syl] = "(en)" not in ph and any(c.isdigit() for c in ph)
        return self.ok[syl]

    def __call__(self, text: str) -> list[str] | None:
        from pypinyin import Style, lazy_pinyin

        syls = lazy_pinyin(text, style=Style.TONE3, neutral_tone_with_five=True)
        if len(syls) != len(text) or not all(s[-1:].isdigit() and self._check(s) for s in syls):
            return None
        return syls


# --- speech --------------------------------------------------------------------------------------------

def _colored_noise(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """white, pink (1/f power) or brown (1/f²) noise of unit RMS."""
    w = rng.standard_normal(n)
    if kind != "white":
        spec = np.fft.rfft(w)
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1.0
        spec /= f ** (0.5 if kind == "pink" else 1.0)
        w = np.fft.irfft(spec, n)
    return w / max(float(np.sqrt(np.mean(w ** 2))), 1e-12)


def draw_condition(seed: int, split: str, index: int, variants: list[str]) -> dict:
    """Voice, speed, pitch, sox effects and noise of one utterance: a function of (seed, split, index)."""
    rng = _rng(seed, split, index, "speech")
    cond = {"voice": variants[int(rng.integers(len(variants)))],
            "speed": int(rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1)),
            "pitch": int(rng.integers(20, 81)), "range": PITCH_RANGES[int(rng.integers(len(PITCH_RANGES)))],
            "effects": ["gain", "-3"]}  # headroom first: clipping otherwise
    if rng.random() < 0.3:
        cond["effects"] += ["reverb", str(int(rng.integers(10, 60)))]
    r = rng.random()
    if r < 0.15:
        cond["effects"] += ["sinc", "300-3400"]  # telephone band
    elif r < 0.3:
        cond["effects"] += ["lowpass", str(int(rng.integers(3000, 6000)))]
    cond["noise"] = None if rng.random() < 0.2 else str(rng.choice(["white", "pink", "brown"]))
    cond["snr_db"] = None if cond["noise"] is None else round(float(rng.uniform(10, 40)), 1)
    cond["noise_seed"] = int(rng.integers(2 ** 31))
    return cond


def synthesize(syllables: list[str], cond: dict) -> np.ndarray:
    """espeak-ng → sox (effects, 16 kHz) → noise at the drawn SNR: float32 samples."""
    voice = f"cmn-latn-pinyin+{cond['voice']}"
    text = f'<speak><prosody range="{cond.get("range", "medium")}">{" ".join(syllables)}</prosody></speak>'
    tts = subprocess.run(["espeak-ng", "-m", "-v", voice, "-s", str(cond["speed"]), "-p", str(cond["pitch"]),
                          "--stdout", text], capture_output=True, check=True)
    fx = subprocess.run(["sox", "-t", "wav", "-", "-t", "raw", "-e", "floating-point", "-b", "32", "-c", "1",
                         "-r", str(SAMPLE_RATE), "-", *cond["effects"]], input=tts.stdout, capture_output=True,
                        check=True)
    x = np.frombuffer(fx.stdout, dtype=np.float32)
    return add_noise(x, cond, np.random.default_rng(cond.get("noise_seed", 0)))


def add_noise(x: np.ndarray, cond: dict, rng: np.random.Generator) -> np.ndarray:
    """x plus cond's noise kind at cond's SNR (none when cond["noise"] is None), scaled down to peak 0.99 if it
    would clip: float32."""
    x = x.astype(np.float64)
    if cond.get("noise") and x.size:
        rms = float(np.sqrt(np.mean(x ** 2)))
        x = x + _colored_noise(x.size, cond["noise"], rng) * rms * 10 ** (-cond["snr_db"] / 20)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 0.99:
        x *= 0.99 / peak
    return x.astype(np.float32)


# --- the corpus ----------------------------------------------------------------------------------------

def plan_texts(lex: Lexicon, pinyin: Pinyin, counts: dict[str, int], seed: int) -> dict[str, list[tuple[str, list[str]]]]:
    """(text, syllables) per split; a text is in one split only (test first, so held-out texts never
    depend on the size of the training set)."""
    seen: set[str] = set()
    out: dict[str, list] = {}
    for split in ("test", "valid", "train"):
        rng, items = _rng(seed, split, "text"), []
        tries = 0
        while len(items) < counts[split]:
            tries += 1
            if tries > 20 * counts[split] + 1000:
                raise RuntimeError(f"could not draw {counts[split]} distinct {split} sentences (got {len(items)})")
            text = make_sentence(lex, rng)
            if text in seen:
                continue
            syls = pinyin(text)
            if syls is None:
                continue
            seen.add(text)
            items.append((text, syls))
        out[split] = items
    return out


def _one(job) -> dict:
    import soundfile as sf

    out_dir, split, index, text, syls, cond = job
    rel = f"audio/{split}/{split}{index:06d}.flac"
    path = Path(out_dir) / rel
    if not path.is_file():  # a resumed make-corpus keeps what is done
        x = synthesize(syls, cond)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.flac")
        sf.write(tmp, x, SAMPLE_RATE, subtype="PCM_16")
        os.replace(tmp, path)
        n = x.size
    else:
        n = sf.info(path).frames
    return {"key": f"{split}{index:06d}", "source": rel, "source_len": int(round(n / SAMPLE_RATE * 1000)),
            "target": text, "target_len": len(text), "pinyin": " ".join(syls),
            **{k: cond[k] for k in ("voice", "speed", "pitch", "range", "noise", "snr_db")},
            "effects": " ".join(cond["effects"][2:])}


def synthesize_jobs(jobs: list[tuple], workers: int | None = None, progress: bool = True) -> list[dict]:
    """Speak (out_dir, split, index, text, syllables, condition) jobs into out_dir/audio/ with a pool of
    processes (files already there are kept): their rows, in job order."""
    from multiprocessing import get_context

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="utt", desc="synthesizing", dynamic_ncols=True)
    rows = []
    with get_context("spawn").Pool(workers or os.cpu_count() or 1) as pool:
        for row in pool.imap(_one, jobs, chunksize=16):
            rows.append(row)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return rows


def make_corpus(out, hours: float, seed: int = 0, workers: int | None = None, valid_frac: float = 0.02,
                test_frac: float = 0.02, progress: bool = True) -> dict:
    """Write OUT/{train,valid,test}.jsonl (FunASR's keys plus the speech conditions), OUT/audio/, and
    OUT/tokens.json; returns a summary (utterances and hours per split)."""
    check_tools()
    if hours <= 0:
        raise ValueError(f"--hours must be > 0, got {hours}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lex = load_lexicon()
    variants = installed_variants()
    total = max(3, int(hours * 3600 / (SECONDS_PER_CHAR * (MIN_CHARS + MAX_CHARS) / 2)))
    counts = {"test": max(1, int(total * test_frac)), "valid": max(1, int(total * valid_frac))}
    counts["train"] = max(1, total - counts["test"] - counts["valid"])
    texts = plan_texts(lex, Pinyin(), counts, seed)
    jobs = [(str(out), split, i, t, s, draw_condition(seed, split, i, variants))
            for split in SPLITS for i, (t, s) in enumerate(texts[split])]
    rows: dict[str, list] = {s: [] for s in SPLITS}
    for row in synthesize_jobs(jobs, workers, progress):
        rows[row["key"].rstrip("0123456789")].append(row)
    summary = {"seed": seed, "hours_requested": hours, "variants": variants, "splits": {}}
    for split in SPLITS:
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for r in rows[split]:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        summary["splits"][split] = {"utterances": len(rows[split]),
                                    "hours": round(sum(r["source_len"] for r in rows[split]) / 3.6e6, 3)}
    with open(out / "tokens.json", "w", encoding="utf-8") as f:
        json.dump(tokens_for(lex), f, ensure_ascii=False, indent=0)
    with open(out / "corpus.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, ensure_ascii=False, indent=1)
    return summary
