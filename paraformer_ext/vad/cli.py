"""`paraformer-ext vad FILE... [--json] [--model-dir DIR] [--max-end-silence-time MS]`.

Prints each file's speech segments as [[start_ms, end_ms], ...] (FunASR's fsmn-vad; spec fsmn_vad.md).
"""
from __future__ import annotations

import argparse
import json
import sys

__all__ = ["vad_main", "build_parser"]


def build_parser(prog: str = "paraformer-ext vad") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog,
        description="Speech segments of audio files with FunASR's fsmn-vad: [[start_ms, end_ms], ...] per file. "
        "Without --model-dir, FunASR's fsmn-vad weights shipped with paraformer_ext are used.",
    )
    ap.add_argument("files", nargs="+", metavar="FILE", help="audio files (wav/flac/...; resampled to 16 kHz, mono)")
    ap.add_argument("--json", action="store_true", help='one JSON object per file: {"key": FILE, "value": [[s, e], ...]}')
    ap.add_argument("--model-dir", help="a FunASR fsmn-vad model directory (model.pt, config.yaml, am.mvn)")
    ap.add_argument(
        "--max-end-silence-time",
        type=float,
        metavar="MS",
        help="fixed end-silence mode with this many ms (FunASR's max_end_silence_time; config.yaml has 800). "
        "Default: FunASR's dynamic end-silence schedule",
    )
    ap.add_argument("--speech-noise-thres", type=float, metavar="X", help="fixed mode only (default: config.yaml's 0.6)")
    ap.add_argument("--device", default="cpu", help="torch device for the network (default cpu)")
    return ap


def vad_main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status: 0 all files done, 1 some file failed, 2 the model failed to load."""
    args = build_parser().parse_args(argv)
    if args.speech_noise_thres is not None and args.max_end_silence_time is None:
        print("paraformer-ext vad: --speech-noise-thres only applies with --max-end-silence-time "
              "(the default dynamic mode always uses 0.5)", file=sys.stderr)
        return 2

    from ..audio import AudioError
    from .model import FsmnVad
    from .weights import VadWeightsError

    try:
        vad = FsmnVad.load(args.model_dir, device=args.device)
    except (VadWeightsError, ValueError, NotImplementedError, OSError) as e:
        print(f"paraformer-ext vad: cannot load the VAD model: {e}", file=sys.stderr)
        return 2
    failed = 0
    for path in args.files:
        try:
            segs = vad.segments(path, args.max_end_silence_time, speech_noise_thres=args.speech_noise_thres)
        except (AudioError, OSError, ValueError, RuntimeError) as e:
            failed += 1
            msg = str(e) if path in str(e) else f"{path}: {e}"
            print(f"paraformer-ext vad: {msg}", file=sys.stderr)
            if args.json:
                print(json.dumps({"key": path, "error": str(e)}, ensure_ascii=False), flush=True)
            continue
        if args.json:
            print(json.dumps({"key": path, "value": segs}, ensure_ascii=False), flush=True)
        elif len(args.files) == 1:
            print(json.dumps(segs), flush=True)
        else:
            print(f"{path}: {json.dumps(segs)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(vad_main())
