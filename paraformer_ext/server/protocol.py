"""FunASR's websocket protocol (spec paraformer.md §9): the client's messages in, our result messages out.

Where FunASR's documents, servers and clients disagree, this module takes the reading that every known
client accepts (issue 13): `null` for an absent key, unknown keys ignored, `chunk_size` as a list or a
"5,10,5" string, `hotwords` as a JSON map string, a map, a list or a comma/space separated string,
`timestamp` sent as a JSON *string*, `mode` and `text` always present, exactly one `is_final: true`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..hotwords import HotwordError, HotwordList

MODES = ("offline", "2pass", "online")
# FunASR's python server starts in 2pass; funasr-client sends `"mode": null` when not told otherwise
DEFAULT_MODE = "2pass"
# the formats read as raw 16-bit little-endian samples; anything else is a container read with soundfile
PCM_FORMATS = ("pcm", "", "raw", "s16le")


class ProtocolError(ValueError):
    """A message this server cannot act on; `code` is sent to the client with the message text."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class Utterance:
    """What the client's first message asks for."""

    mode: str = DEFAULT_MODE
    wav_name: str = "default"
    wav_format: str = "pcm"
    audio_fs: int = 16000
    chunk_size: tuple[int, int, int] = (5, 10, 5)
    chunk_interval: int = 10
    # the streaming model's look-backs (FunASR's encoder_chunk_look_back / decoder_chunk_look_back, in chunks);
    # FunASR's documented 4 and 1 unless the client sends them (its python client sends 4 and 0)
    encoder_look_back: int = 4
    decoder_look_back: int = 1
    hotwords: HotwordList = field(default_factory=HotwordList)  # the server's list merged with the client's
    itn: bool = True

    @property
    def pcm(self) -> bool:
        return self.wav_format in PCM_FORMATS

    @property
    def chunk_ms(self) -> int:
        """One chunk of FunASR's streaming model (chunk_size[1] × 60 ms): the pace of the online partials."""
        return 60 * self.chunk_size[1]


def _int(value, name: str, lo: int, hi: int) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ProtocolError("bad_request", f"{name} must be an integer, got {value!r}") from None
    if isinstance(value, float) and v != value:
        raise ProtocolError("bad_request", f"{name} must be an integer, got {value!r}")
    if not lo <= v <= hi:
        raise ProtocolError("bad_request", f"{name} must be in [{lo}, {hi}], got {v}")
    return v


def parse_chunk_size(value) -> tuple[int, int, int]:
    if isinstance(value, str):
        value = [x for x in value.replace(" ", ",").split(",") if x]
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ProtocolError("bad_request", f"chunk_size must be three numbers [look-back, chunk, look-ahead] "
                                           f"as a list or a \"5,10,5\" string, got {value!r}")
    a, b, c = (_int(x, "chunk_size", 0, 1000) for x in value)
    if b < 1:
        raise ProtocolError("bad_request", f"chunk_size[1] (the chunk, in 60 ms units) must be >= 1, got {b}")
    return a, b, c


def parse_hotwords(value) -> HotwordList:
    """A client's `hotwords`, in any form HotwordList.parse reads; a bad one is this client's bad_request."""
    try:
        return HotwordList.parse(value, source="hotwords")
    except HotwordError as e:
        raise ProtocolError("bad_request", str(e)) from None


def parse_message(text: str) -> dict:
    try:
        msg = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ProtocolError("bad_json", f"a text message must be a JSON object: {e}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_json", f"a text message must be a JSON object, got {type(msg).__name__}")
    return msg


def is_end_message(msg: dict) -> bool:
    """{"is_speaking": false} ends the audio of an utterance; every other object starts one."""
    return msg.get("is_speaking") is False


def parse_first_message(msg: dict, server_hotwords: HotwordList | None = None) -> Utterance:
    """The client's first message → Utterance. Keys that are null count as absent; unknown keys are ignored."""
    get = lambda k: msg.get(k) if msg.get(k) is not None else None  # noqa: E731
    u = Utterance()
    mode = get("mode")
    if mode is not None:
        if mode not in MODES:
            raise ProtocolError("bad_mode", f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        u.mode = mode
    if get("wav_name") is not None:
        u.wav_name = str(get("wav_name"))
    if get("wav_format") is not None:
        u.wav_format = str(get("wav_format")).lower().lstrip(".")
    if get("audio_fs") is not None:
        u.audio_fs = _int(get("audio_fs"), "audio_fs", 1000, 384000)
    if get("chunk_size") is not None:
        u.chunk_size = parse_chunk_size(get("chunk_size"))
    if get("encoder_chunk_look_back") is not None:
        u.encoder_look_back = _int(get("encoder_chunk_look_back"), "encoder_chunk_look_back", 0, 64)
    if get("decoder_chunk_look_back") is not None:
        u.decoder_look_back = _int(get("decoder_chunk_look_back"), "decoder_chunk_look_back", 0, 64)
    if get("chunk_interval") is not None:
        u.chunk_interval = _int(get("chunk_interval"), "chunk_interval", 1, 1000)
    # FunASR's servers merge so: the server's --hotword list for everyone, the client's weights winning
    u.hotwords = HotwordList(server_hotwords).merged(parse_hotwords(get("hotwords")))
    if get("itn") is not None:
        itn = get("itn")
        u.itn = itn if isinstance(itn, bool) else str(itn).lower() not in ("0", "false", "no")
    if not u.pcm and u.mode != "offline":
        raise ProtocolError("bad_format", f"wav_format {u.wav_format!r} (a container) is read whole at the end: "
                                          f"use mode offline, or send raw pcm (wav_format \"pcm\") for {u.mode}")
    return u


# --- results --------------------------------------------------------------------------------------------


def stamp_sents(parts, spans) -> list[dict]:
    """FunASR's stamp_sents, one per recognized segment: {text_seg, punc, start, end, ts_list} (ms). parts:
    the segments' results with absolute timestamps; spans: their [start, end] (used when a part has no token).
    There is no punctuation model, so punc is always ""."""
    out = []
    for r, (s, e) in zip(parts, spans):
        ts = r.get("timestamp") or []
        out.append({"text_seg": r["text"], "punc": "", "start": ts[0][0] if ts else s,
                    "end": ts[-1][1] if ts else e, "ts_list": ts})
    return out


def result_message(u: Utterance, mode: str, text: str, *, is_final: bool, timestamp=None, sents=None,
                   hotwords=None) -> dict:
    """hotwords: the occurrences found (the recognizer's "hotwords" results), sent when the utterance had a list."""
    msg = {"mode": mode, "wav_name": u.wav_name, "text": text, "is_final": is_final}
    if timestamp is not None:
        # a JSON string, as FunASR's documents and C++ servers send it; both PyPI clients parse it so
        msg["timestamp"] = json.dumps(timestamp, separators=(",", ":"))
    if sents is not None:
        msg["stamp_sents"] = sents
    if hotwords is not None:
        msg["hotwords"] = hotwords
    return msg


def error_message(code: str, message: str, u: Utterance | None = None, mode: str | None = None) -> dict:
    """An error for one client. `error` is an object {code, message}: funasr-python parses it so (a plain
    string there breaks its parser); is_final ends the utterance for clients that wait for it."""
    return {"mode": mode or (u.mode if u else DEFAULT_MODE), "wav_name": u.wav_name if u else "",
            "text": "", "is_final": True, "error": {"code": code, "message": message}}


def end_ack(u: Utterance) -> dict:
    return {"mode": u.mode, "wav_name": u.wav_name, "text": "", "is_final": True, "is_end": True}
