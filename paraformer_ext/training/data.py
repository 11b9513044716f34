"""Training data: FunASR's lists (jsonl, or wav.scp + text) → tokenized utterances → batches by padded frames.

Every line that cannot be used is reported with file:line and skipped (or, with strict=True, stops the run),
so one bad line in a 100k-line list costs one utterance, not the run, and the user can find and fix it.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..audio import AudioError, audio_num_samples
from ..text import TokenList


class DataError(ValueError):
    """A training list that cannot be used (strict mode, or nothing usable left). The message says where."""


@dataclass
class Utterance:
    key: str
    path: str  # the audio file
    text: str  # the reference text, as written in the list
    ids: list[int]  # token ids of `text`
    where: str  # "file:line" of the entry, for messages
    samples: int = 0  # audio length at the model's rate (from the header)


@dataclass
class DataReport:
    """What reading a list skipped or could not tokenize."""

    problems: list[str] = field(default_factory=list)  # "file:line: what was wrong"
    unknown: Counter = field(default_factory=Counter)  # character/word -> occurrences mapped to <unk>

    def problem(self, where: str, msg, strict: bool) -> None:
        """A bad line: the run stops on it with --strict, else it is skipped and counted."""
        if strict:
            raise DataError(f"{where}: {msg} (run without --strict to skip such lines)")
        self.problems.append(f"{where}: {msg}")

    def summary(self, name: str, kept: int) -> str:
        s = f"{name}: {kept} utterances"
        if self.problems:
            s += f", {len(self.problems)} skipped (first: {self.problems[0]})"
        if self.unknown:
            top = ", ".join(f"{c!r}×{n}" for c, n in self.unknown.most_common(10))
            s += f"; {sum(self.unknown.values())} unknown tokens mapped to <unk> ({len(self.unknown)} distinct: {top})"
        return s


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return 0x3400 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x2FA1F


def _word_pieces(word: str, tokens: TokenList) -> list[str] | None:
    """`word` as FunASR's BPE-style pieces ("ab@@", "cd@@", "e"): the whole word if it is a token, else the
    longest-prefix split; None when no split exists. Greedy longest prefix is simple, not the tokenizer the
    model was trained with (seg_dict / sentencepiece), so an odd split is possible but never a wrong word."""
    if word in tokens:
        return [word]
    out, i = [], 0
    while i < len(word):
        for j in range(len(word), i, -1):
            piece = word[i:j] if j == len(word) else word[i:j] + "@@"
            if piece in tokens:
                out.append(piece)
                i = j
                break
        else:
            return None
    return out


def tokenize(text: str, tokens: TokenList, unknown: Counter | None = None) -> list[int]:
    """One id per CJK character; Latin words (case-folded when only the folded form is a token) as pieces;
    whatever has no token becomes <unk> and is counted in `unknown`."""
    ids: list[int] = []
    for chunk in text.split():
        word = ""
        for ch in chunk + " ":  # the sentinel flushes the last word
            if _is_cjk(ch) or ch == " ":
                if word:
                    pieces = _word_pieces(word, tokens) or _word_pieces(word.lower(), tokens)
                    if pieces is None:
                        ids.append(tokens.unk_id)
                        if unknown is not None:
                            unknown[word] += 1
                    else:
                        ids.extend(tokens.token_to_id(p) for p in pieces)
                    word = ""
                if ch != " ":
                    if ch in tokens:
                        ids.append(tokens.token_to_id(ch))
                    else:
                        ids.append(tokens.unk_id)
                        if unknown is not None:
                            unknown[ch] += 1
            else:
                word += ch
    return ids


def _finish(entries, tokens: TokenList, sample_rate: int, strict: bool, report: DataReport) -> list[Utterance]:
    """Tokenize entries (key, path, text, where) and read their lengths; a bad one is reported or raised."""
    out = []
    for key, path, text, where in entries:
        def bad(msg):
            report.problem(where, msg, strict)

        try:
            n = audio_num_samples(path, sample_rate)
        except (AudioError, OSError, RuntimeError, ValueError) as e:
            bad(f"audio {path!r} of {key!r} cannot be read: {e}")
            continue
        ids = tokenize(text, tokens, report.unknown)
        if not ids:
            bad(f"{key!r} has an empty target text")
            continue
        out.append(Utterance(key, path, text, ids, where, n))
    return out


def read_jsonl(path, tokens: TokenList, sample_rate: int = 16000, strict: bool = False) -> tuple[list[Utterance], DataReport]:
    """FunASR's jsonl: one {"key", "source": audio path, "target": text, ...} per line. Relative audio paths
    are taken relative to the list's directory when they do not exist as given."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: training list does not exist")
    report, entries = DataReport(), []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            where = f"{path}:{n}"
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                if not isinstance(d, dict):
                    raise ValueError(f"a JSON {type(d).__name__}, expected an object")
                missing = [k for k in ("source", "target") if not isinstance(d.get(k), str)]
                if missing:
                    raise ValueError(f"no string {' / '.join(repr(k) for k in missing)} (need key, source, target)")
            except ValueError as e:
                report.problem(where, e, strict)
                continue
            entries.append((str(d.get("key", f"{path.stem}-{n}")), _resolve(d["source"], path), d["target"], where))
    return _finish(entries, tokens, sample_rate, strict, report), report


def _resolve(audio: str, listfile: Path) -> str:
    p = Path(audio)
    return str(listfile.parent / p) if not p.is_absolute() and not p.exists() and (listfile.parent / p).exists() else audio


def _two_columns(path: Path, strict: bool, report: DataReport) -> dict[str, tuple[str, str]]:
    """key -> (value, "file:line") from a Kaldi-style "KEY VALUE" file."""
    out: dict[str, tuple[str, str]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            where = f"{path}:{n}"
            parts = line.strip().split(maxsplit=1)
            if not parts:
                continue
            msg = None
            if len(parts) < 2:
                msg = f"expected 'KEY VALUE', got only {parts[0]!r}"
            elif parts[0] in out:
                msg = f"key {parts[0]!r} repeats (first at {out[parts[0]][1]})"
            if msg:
                report.problem(where, msg, strict)
                continue
            out[parts[0]] = (parts[1], where)
    return out


def read_scp(wav_scp, text, tokens: TokenList, sample_rate: int = 16000, strict: bool = False) -> tuple[list[Utterance], DataReport]:
    """Kaldi-style pairs: wav.scp ("KEY PATH") and text ("KEY TRANSCRIPT"), matched by key; a key in only one
    of them is reported at its line."""
    wav_scp, text = Path(wav_scp), Path(text)
    for p in (wav_scp, text):
        if not p.is_file():
            raise DataError(f"{p}: does not exist")
    report = DataReport()
    wavs, texts = _two_columns(wav_scp, strict, report), _two_columns(text, strict, report)
    entries = []
    for key, (wav, where) in wavs.items():
        if key in texts:
            entries.append((key, _resolve(wav, wav_scp), texts[key][0], where))
        else:
            report.problem(where, f"key {key!r} has no line in {text}", strict)
    for key, (_, where) in texts.items():
        if key not in wavs:
            report.problem(where, f"key {key!r} has no line in {wav_scp}", strict)
    return _finish(entries, tokens, sample_rate, strict, report), report


def read_list(spec: str, tokens: TokenList, sample_rate: int = 16000, strict: bool = False) -> tuple[list[Utterance], DataReport]:
    """A .jsonl file, or "WAV_SCP,TEXT" (two files), or a directory holding wav.scp and text."""
    p = Path(spec)
    if "," in spec and not p.exists():
        scp, txt = spec.split(",", 1)
        return read_scp(scp, txt, tokens, sample_rate, strict)
    if p.is_dir():
        return read_scp(p / "wav.scp", p / "text", tokens, sample_rate, strict)
    return read_jsonl(p, tokens, sample_rate, strict)


def make_batches(frames: list[int], max_batch_frames: int, seed: int, epoch: int) -> list[list[int]]:
    """Indices grouped so that a batch's padded size (count × longest) stays within max_batch_frames: sorted by
    length (little padding), then the batch order shuffled with (seed, epoch), so a resumed run sees the same
    order. An utterance longer than the budget gets a batch of its own."""
    order = sorted(range(len(frames)), key=lambda i: (frames[i], i))
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * frames[i] > max_batch_frames:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    random.Random(seed * 1000003 + epoch).shuffle(batches)
    return batches
