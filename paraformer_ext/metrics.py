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


def align(ref: Sequence, hyp: Sequence) -> list[tuple[str, int | None, int | None]]:
    """A minimum-edit alignment as (op, ref index, hyp index) with op "=", "sub", "del" (ref only) or "ins"
    (hyp only); its non-"=" count is edit_distance(ref, hyp). Ties prefer substitution, then deletion."""
    n, m = len(ref), len(hyp)
    d = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        d[i][0] = i
    for j in range(m + 1):
        d[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]))
    out, i, j = [], n, m
    while i or j:
        if i and j and d[i][j] == d[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]):
            out.append(("=" if ref[i - 1] == hyp[j - 1] else "sub", i - 1, j - 1))
            i, j = i - 1, j - 1
        elif i and d[i][j] == d[i - 1][j] + 1:
            out.append(("del", i - 1, None))
            i -= 1
        else:
            out.append(("ins", None, j - 1))
            j -= 1
    return out[::-1]
