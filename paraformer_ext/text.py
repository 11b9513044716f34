"""Token ids -> text exactly as FunASR's Paraformer produces it (spec §1.3 steps 5-8, §1.4, §1.5).

* :class:`TokenList`: FunASR's ``tokens.json`` (a JSON array, index = id) or ``tokens.txt`` (one token per
  line, line number = id, each line right-stripped), with FunASR's checks (no duplicates, ``<unk>`` present).
* :func:`filter_special`: FunASR removes blank/sos/eos (ids 0, 1, 2) *anywhere* in the greedy sequence.
* :func:`sentence_postprocess`: ``funasr/utils/postprocess_utils.py::sentence_postprocess`` (with
  ``abbr_dispose``), both with and without timestamps, quirks included (see its docstring).
* :func:`postprocess`: one utterance's result as ``Paraformer.inference`` builds it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .timestamps import paraformer_timestamps

__all__ = [
    "SPECIAL_IDS",
    "TokenList",
    "filter_special",
    "sentence_postprocess",
    "postprocess",
]

BLANK_ID, SOS_ID, EOS_ID = 0, 1, 2
SPECIAL_IDS = (BLANK_ID, SOS_ID, EOS_ID)  # fixed by Paraformer's constructor, not read from the token list

UNK = "<unk>"


# --------------------------------------------------------------------------------------------------------------
# Token list


class TokenList:
    """The id -> token table of a FunASR model directory.

    ``TokenList(["<blank>", "<s>", "</s>", ..., "<unk>"])`` or :meth:`load`. Raises ValueError on a duplicate
    token or a missing ``<unk>`` (FunASR refuses both).
    """

    def __init__(self, tokens: Iterable[str], source: str = "<list>"):
        toks = list(tokens)
        for i, t in enumerate(toks):
            if not isinstance(t, str):
                raise ValueError(f"{source}: token {i} is {type(t).__name__} {t!r}, expected a string")
        index: dict[str, int] = {}
        for i, t in enumerate(toks):
            if t in index:
                raise ValueError(f"{source}: token {t!r} is duplicated (ids {index[t]} and {i}); ids must be unique")
            index[t] = i
        if UNK not in index:
            raise ValueError(f"{source}: no '{UNK}' token; FunASR token lists must contain '{UNK}'")
        self._tokens = toks
        self._index = index
        self.source = source

    @classmethod
    def load(cls, path) -> "TokenList":
        """Read ``tokens.json`` (JSON array of strings) or ``tokens.txt`` (one token per line).

        A model directory is accepted too: its ``tokens.json`` is used, else its ``tokens.txt`` (FunASR's
        preference when both exist).
        """
        p = Path(path)
        if p.is_dir():
            for name in ("tokens.json", "tokens.txt"):
                if (p / name).is_file():
                    p = p / name
                    break
            else:
                raise FileNotFoundError(f"{p}: no tokens.json or tokens.txt in this model directory")
        if not p.is_file():
            raise FileNotFoundError(f"token list {p} does not exist")
        if p.suffix == ".json":
            try:
                with open(p, encoding="utf-8") as f:
                    data = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{p}: not a valid UTF-8 JSON file ({e})") from e
            if not isinstance(data, list):
                raise ValueError(f"{p}: expected a JSON array of token strings, got a JSON {type(data).__name__}")
            return cls(data, source=str(p))
        if p.suffix == ".txt":
            try:
                with open(p, encoding="utf-8") as f:
                    # FunASR strips trailing whitespace (newline included) from every line
                    lines = [line.rstrip() for line in f]
            except UnicodeDecodeError as e:
                raise ValueError(f"{p}: not a UTF-8 text file ({e})") from e
            return cls(lines, source=str(p))
        raise ValueError(f"{p}: unknown token list format; expected a .json array or a .txt file (one token a line)")

    def __len__(self) -> int:
        return len(self._tokens)

    def __getitem__(self, i: int) -> str:
        i = int(i)
        if not 0 <= i < len(self._tokens):
            raise IndexError(f"token id {i} out of range for a {len(self._tokens)}-token list ({self.source})")
        return self._tokens[i]

    def __iter__(self):
        return iter(self._tokens)

    def __contains__(self, token) -> bool:
        return token in self._index

    def __repr__(self) -> str:
        return f"TokenList({len(self)} tokens from {self.source})"

    @property
    def unk_id(self) -> int:
        return self._index[UNK]

    def token_to_id(self, token: str) -> int:
        """The id of ``token``, or ``unk_id`` if absent (as FunASR's ``tokens2ids``)."""
        return self._index.get(token, self._index[UNK])

    def ids_to_tokens(self, ids) -> list[str]:
        """Plain lookup of a 1-D sequence of ids (list, numpy array or tensor). Out-of-range ids raise
        IndexError (FunASR would silently wrap negative ids)."""
        return [self[i] for i in _as_id_list(ids)]


def _as_id_list(ids) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.is_floating_point() or ids.is_complex():
            raise TypeError(f"token ids must be integers, got a {ids.dtype} tensor")
        if ids.dim() != 1:
            raise ValueError(f"token ids must be 1-D, got shape {tuple(ids.shape)}")
        return [int(x) for x in ids.tolist()]
    if isinstance(ids, np.ndarray):
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"token ids must be integers, got a {ids.dtype} array")
        if ids.ndim != 1:
            raise ValueError(f"token ids must be 1-D, got shape {ids.shape}")
        return [int(x) for x in ids.tolist()]
    out = []
    for x in ids:
        if isinstance(x, (bool, float)) or not isinstance(x, (int, np.integer)):
            raise TypeError(f"token ids must be integers, got {type(x).__name__} {x!r}")
        out.append(int(x))
    return out


def filter_special(ids) -> list[int]:
    """Drop every blank (0), sos (1) and eos (2) id wherever it occurs (FunASR filters, it does not truncate)."""
    return [i for i in _as_id_list(ids) if i not in SPECIAL_IDS]


# --------------------------------------------------------------------------------------------------------------
# sentence_postprocess
#
# Facts about FunASR's implementation that the output depends on (all reproduced):
# * "<s>", "</s>", "<unk>", "<OOV>" tokens are dropped (exact match) before anything else.
# * "Chinese" is a *string* comparison: "\u4e00" <= s <= "\u9fff", or "0" <= s <= "9", or s == "@". For a
#   whole token that is lexicographic ("1a" counts, "9a" does not); for a single character it is a range test.
# * The three modes are chosen on the whole list: every token Chinese -> tokens kept as they are; every token
#   alphabetic (str.isalpha and not Chinese) or "'" -> each token is a word; otherwise the mixed mode, which
#   classifies each token by its *characters*. An "@@" token is never alphabetic ('@' is not a letter), so the
#   "@@" gluing only happens in the mixed mode.
# * Mixed mode: an "@@" piece is held back (its "@@" removed) and prepended to the next plain latin token,
#   however far away; if none follows it is dropped. A latin word is followed by a " " entry which a following
#   CJK token removes (this pops whatever was appended last). Other tokens (e.g. "x1") are appended as they
#   are, without a timestamp.
# * With timestamps, the mixed mode reads time_stamp[i] for token i whenever no "@@" piece is pending; while
#   one is pending it keeps the first piece's start and the latest piece's end, and the *next* CJK or latin
#   token takes that span. So a CJK token right after an "@@" piece gets the piece's span, and a latin word
#   whose pieces are separated by CJK tokens gets its last piece's span only.
# * abbr_dispose: runs "x", " ", "y", " ", "z" of single ASCII letters become one upper-case word "XYZ"
#   (start of its first letter, end of its last). Timestamps are looked up by the word's position among the
#   non-" " entries, which drifts from the span list when tokens without a span were kept.
# * Without timestamps the text is "".join(entries).strip(); with timestamps " ".join(non-" " entries).

_DROPPED = ("<s>", "</s>", "<unk>", "<OOV>")
_MARKERS = (" ", "</s>", "<s>", "<unk>", "<OOV>")  # removed in this order before classifying


def _clean(s: str) -> str:
    for m in _MARKERS:
        s = s.replace(m, "")
    return s


def _is_chinese(s: str) -> bool:
    return "\u4e00" <= s <= "\u9fff" or "0" <= s <= "9" or s == "@"


def _all_chinese(items) -> bool:
    """items: a list of tokens, or one token (then its characters are tested)."""
    cleaned = [_clean(x) for x in items]
    return len(cleaned) > 0 and all(_is_chinese(c) for c in cleaned)


def _all_alpha(items) -> bool:
    cleaned = [_clean(x) for x in items]
    if not cleaned:
        return False
    for c in cleaned:
        if c == "'":
            continue
        if not c.isalpha() or _is_chinese(c):
            return False
    return True


def _is_ascii_letter(w: str) -> bool:
    return len(w) == 1 and w.isascii() and w.isalpha()


class _ShortTimestamps(ValueError):
    pass


def _span(time_stamp, i: int, what: str):
    if i >= len(time_stamp):
        raise _ShortTimestamps(
            f"sentence_postprocess: {what} needs timestamp {i} but only {len(time_stamp)} were given; FunASR "
            "raises IndexError here (its timestamp function found fewer token boundaries than tokens)"
        )
    return time_stamp[i]


def _words_and_spans(toks: list[str], time_stamp):
    """First stage: entries (words and " " separators) and their spans (None without timestamps)."""
    with_ts = time_stamp is not None
    entries: list[str] = []
    spans: list[list] | None = [] if with_ts else None

    if _all_chinese(toks):
        entries = [t.replace(" ", "") for t in toks]
        if with_ts:
            spans = [list(s) for s in time_stamp]
        return entries, spans

    if _all_alpha(toks):  # no "@@" can occur here ('@' is not alphabetic)
        for i, t in enumerate(toks):
            entries += [t, " "]
            if with_ts:
                b, e = _span(time_stamp, i, f"token {i} {t!r}")
                spans.append([b, e])
        return entries, spans

    pending = ""  # held-back "@@" pieces
    space_pending = False  # the last entry is the " " after a latin word
    holding = False  # an "@@" piece's span is being carried
    begin = end = -1
    for i, t in enumerate(toks):
        if with_ts and not holding:
            begin, end = _span(time_stamp, i, f"token {i} {t!r}")
        if _all_chinese(t):
            if space_pending:
                entries.pop()
            entries.append(t)
            space_pending = False
            if with_ts:
                holding = False
                spans.append([begin, end])
        elif "@@" in t:
            pending += t.replace("@@", "")
            space_pending = False
            if with_ts:
                holding = True
                end = _span(time_stamp, i, f"token {i} {t!r}")[1]
        elif _all_alpha(t):
            entries += [pending + t, " "]
            pending = ""
            space_pending = True
            if with_ts:
                holding = False
                end = _span(time_stamp, i, f"token {i} {t!r}")[1]
                spans.append([begin, end])
        else:
            entries.append(t)
    return entries, spans


def _merge_abbreviations(entries: list[str], spans):
    """FunASR's abbr_dispose: "a", " ", "b", " ", "c" -> "ABC"."""
    n = len(entries)
    runs: dict[int, int] = {}  # first index -> last index of a letter run
    i = 0
    while i < n:
        if _is_ascii_letter(entries[i]) and i + 2 < n and entries[i + 1] == " " and _is_ascii_letter(entries[i + 2]):
            j = i + 2
            while j + 2 < n and entries[j + 1] == " " and _is_ascii_letter(entries[j + 2]):
                j += 2
            runs[i] = j
            i = j + 1
        else:
            i += 1

    # position of each entry among the non-" " entries (a " " gets the position of the next word)
    word_pos = []
    k = 0
    for w in entries:
        word_pos.append(k)
        if w != " ":
            k += 1

    out: list[str] = []
    out_spans: list[list] | None = [] if spans is not None else None
    i = 0
    while i < n:
        if i in runs:
            j = runs[i]
            out.append("".join(w.upper() for w in entries[i : j + 1] if w != " "))
            if spans is not None:
                begin = _span(spans, word_pos[i], f"abbreviation {out[-1]!r}")[0]
                if word_pos[j] < len(spans):
                    out_spans.append([begin, spans[word_pos[j]][1]])
            i = j + 1
            continue
        w = entries[i]
        out.append(w)
        if spans is not None and w != " " and word_pos[i] < len(spans):
            out_spans.append(list(spans[word_pos[i]]))
        i += 1
    return out, out_spans


def sentence_postprocess(
    words: Sequence[str], time_stamp: list[list[int]] | None = None
) -> tuple[str, list[list[int]] | None, list[str]]:
    """FunASR's ``sentence_postprocess`` (see the notes above this function for every rule).

    words: the token strings of one utterance (bytes are decoded as UTF-8).
    time_stamp: per-token ``[start_ms, end_ms]`` (from the timestamp function) or None.

    Returns ``(text, spans, words)``: without timestamps ``text`` joins the entries without separators (CJK
    unspaced, latin words spaced) and ``spans`` is None; with timestamps ``text`` is the words joined by single
    spaces and ``spans`` holds one ``[start, end]`` per word (fewer when FunASR's lists drift, see above).
    ``words`` are the final non-space words. Raises ValueError where FunASR raises IndexError (fewer
    timestamps than the mixed/latin modes index).
    """
    toks = []
    for w in words:
        s = w.decode("utf-8") if isinstance(w, (bytes, bytearray)) else w
        if not isinstance(s, str):
            raise TypeError(f"sentence_postprocess: tokens must be str or bytes, got {type(w).__name__}")
        if s not in _DROPPED:
            toks.append(s)
    entries, spans = _words_and_spans(toks, time_stamp)
    entries, spans = _merge_abbreviations(entries, spans)
    real = [w for w in entries if w != " "]
    if time_stamp is None:
        return "".join(entries).strip(), None, real
    return " ".join(real).strip(), spans, real


# --------------------------------------------------------------------------------------------------------------
# One utterance, end to end


def postprocess(
    token_ids,
    tokens: TokenList,
    fires=None,
    alphas=None,
    timestamps: bool = False,
    vad_offset_ms: float = 0.0,
    hotwords=None,
) -> dict:
    """One utterance's result as FunASR's ``Paraformer.inference`` builds it.

    token_ids: (N,) greedy ids of the N decoder positions (special ids are removed here).
    tokens: the model's :class:`TokenList`.
    fires, alphas: (T+1,) float vectors of this utterance from the CIF predictor, tail slot included, cut to
        its own length + 1 (needed only with ``timestamps=True``).
    vad_offset_ms: added to every time (FunASR's ``begin_time`` of a VAD segment).

    Returns ``{"text", "token_ids"}`` and, with ``timestamps=True``, ``"timestamp": [[start_ms, end_ms], ...]``
    one per word; then ``"text"`` is FunASR's space-separated with-timestamp text ("欢 迎 大 家").

    hotwords: the hotword occurrences the decoder found, ``[(word, start, end), ...]`` over the N positions of
    ``token_ids`` (end exclusive), or None. They are reported as ``"hotwords": [{"word", "start", "end"}, ...]``
    with start/end indexing the returned ``token_ids`` (specials removed), plus ``"timestamp": [start_ms,
    end_ms]`` (first token's start, last token's end) with ``timestamps=True``.
    """
    raw_ids = _as_id_list(token_ids)
    ids = filter_special(raw_ids)
    toks = tokens.ids_to_tokens(ids)
    if not timestamps:
        text, _, _ = sentence_postprocess(toks)
        out = {"text": text, "token_ids": ids}
        raw = None
    else:
        if fires is None or alphas is None:
            raise ValueError("postprocess(timestamps=True) needs the utterance's fires and alphas vectors (T+1,)")
        raw = paraformer_timestamps(fires, alphas, toks, vad_offset_ms=vad_offset_ms)
        text, spans, _ = sentence_postprocess(toks, raw)
        out = {"text": text, "token_ids": ids, "timestamp": spans}
    if hotwords is not None:
        out["hotwords"] = _hotword_spans(hotwords, raw_ids, raw)
    return out


def _hotword_spans(hotwords, raw_ids: list[int], raw_times) -> list[dict]:
    """(word, start, end) over the decoder positions → entries indexing the filtered token ids (a hotword
    holds no special token, so its span stays contiguous after filtering)."""
    index, k = [], 0  # index[p]: position p's index among the non-special ids
    for i in raw_ids:
        index.append(k)
        k += i not in SPECIAL_IDS
    out = []
    for word, start, end in hotwords:
        s = index[start]
        e = s + (end - start)
        entry = {"word": word, "start": s, "end": e}
        if raw_times is not None and e <= len(raw_times):
            entry["timestamp"] = [raw_times[s][0], raw_times[e - 1][1]]
        out.append(entry)
    return out
