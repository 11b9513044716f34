"""What a transcription returns: FunASR's result dict, with its keys, plus ours where FunASR has none."""
from __future__ import annotations

from typing import TypedDict


class Result(TypedDict, total=False):
    """One input's result, as FunASR's `AutoModel.generate` returns it (key, text, timestamp) plus:

    token_ids: the recognized token ids, specials removed (FunASR keeps them internally);
    segments: [[start_ms, end_ms], ...] of the VAD segments (or windows) a long input was cut into;
    error: why this input could not be transcribed (the others still are); then only "key" is beside it;
    hotwords: with a hotword list, its occurrences in the output: {"word", "start", "end"} (start/end index
    token_ids, end exclusive) + "timestamp": [start_ms, end_ms] with timestamps=True.
    Always present otherwise: key, text, token_ids; timestamp with timestamps=True; segments for a cut input;
    hotwords when decoding with hotwords (an empty list when none was found).
    """

    key: str
    text: str
    timestamp: list[list[int]]  # [[start_ms, end_ms], ...] per token, with timestamps=True
    token_ids: list[int]
    segments: list[list[int]]
    hotwords: list[dict]
    error: str
