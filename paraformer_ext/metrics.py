"""Error counts: the one edit distance behind CER (trainer validation), MWER's Levenshtein errors and the
benchmarks' token edit rate."""
from __future__ import annotations

from collections.abc import Sequence


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance (substitutions, insertions, deletions, each 1) between two sequences."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def character_errors(ref: str, hyp: str) -> int:
    """CER's numerator: the edit distance between the two texts' characters, whitespace ignored."""
    return edit_distance("".join(ref.split()), "".join(hyp.split()))
