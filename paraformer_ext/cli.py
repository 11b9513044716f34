"""Command line: `paraformer-ext transcribe|vad|demo|info|train|train-lm|make-corpus|serve|client`."""
from __future__ import annotations

import argparse
import json
import sys


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="encoder/decoder precision (predictor and CIF stay float32)")
    p.add_argument("--batch-size", type=int, default=None, help="at most this many utterances per batch (default: 256)")
    p.add_argument("--max-batch-frames", type=int, default=None,
                   help="padded 60 ms frames per batch (default: 12000 on cuda, 3000 on cpu)")
    p.add_argument("--no-kernels", action="store_true", help="use the plain PyTorch reference instead of the compiled ops")
    p.add_argument("--quantize", default=None, choices=["int8"],
                   help="int8 weights for the encoder/decoder Linear layers (saved as model_int8.pt on first use)")
    p.add_argument("--quantize-output-layer", action="store_true", help="with --quantize: the output layer too")
    p.add_argument("--cif-threshold", default="tail", choices=["tail", "dynamic"],
                   help="when the last token fires: FunASR's tail weight (default) or the paper's dynamic threshold")
    p.add_argument("--lm", default="auto", metavar="ARPA|auto|none",
                   help="token n-gram language model to search the decoder's posteriors with: auto (default) = the "
                        "model directory's lm.arpa.gz if it has one (the shipped model does), none = greedy")
    p.add_argument("--lm-weight", type=float, default=None, metavar="LAMBDA",
                   help="weight of the language model's log-probabilities (default: 1.0)")


def _lm_kwargs(a) -> dict:
    from .lm_decode import DEFAULT_LM_WEIGHT

    return {"lm": a.lm, "lm_weight": DEFAULT_LM_WEIGHT if a.lm_weight is None else a.lm_weight}


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--long-audio-s", type=float, default=20.0, help="inputs longer than this are cut into segments (default: 20)")
    p.add_argument("--segmenter", default="vad", choices=["vad", "window", "none"],
                   help="how long inputs are cut: FSMN-VAD speech segments (default), fixed windows, or not at all")
    p.add_argument("--window-s", type=float, default=30.0, help="window length for --segmenter window (default: 30)")
    p.add_argument("--vad-model-dir", default=None, help="a FunASR fsmn-vad directory (default: the fsmn-vad shipped with paraformer_ext)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _in_order(pairs):
    """Yield results in input order as soon as each next one is available (inputs finish out of order)."""
    held, nxt = {}, 0
    for i, r in pairs:
        held[i] = r
        while nxt in held:
            yield held.pop(nxt)
            nxt += 1


def _print_results(results, as_json: bool, timestamps: bool) -> int:
    failed = 0
    for r in results:
        if "error" in r:
            failed += 1
            print(f"error: {r['key']}: {r['error']}", file=sys.stderr)
            if as_json:
                print(json.dumps({"key": r["key"], "error": r["error"]}, ensure_ascii=False))
            continue
        if as_json:
            out = {"key": r["key"], "text": r["text"]}
            if timestamps:
                out["timestamp"] = r["timestamp"]
            out["token_ids"] = r["token_ids"]
            if "segments" in r:
                out["segments"] = r["segments"]
            if "hotwords" in r:
                out["hotwords"] = r["hotwords"]
            print(json.dumps(out, ensure_ascii=False), flush=True)
        else:
            line = f"{r['key']}\t{r['text']}"
            if timestamps:
                line += "\t" + json.dumps(r["timestamp"])
            if "hotwords" in r:
                line += "\t" + json.dumps(r["hotwords"], ensure_ascii=False)
            print(line, flush=True)
    return 1 if failed else 0


def cmd_transcribe(a) -> int:
    from pathlib import Path

    from .hotwords import HotwordError
    from .lm import LMError
    from .recognizer import load

    try:
        asr = load(a.model, device=a.device, dtype=a.dtype, kernels=not a.no_kernels, quantize=a.quantize,
                   quantize_output_layer=a.quantize_output_layer, cif_threshold=a.cif_threshold,
                   hotwords=Path(a.hotword) if a.hotword else None, hotword_token_bonus=a.hotword_token_bonus,
                   **_lm_kwargs(a))
    except (HotwordError, LMError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    pairs = asr.transcribe_iter(
        a.audio, batch_size=a.batch_size, max_batch_frames=a.max_batch_frames, timestamps=a.timestamps,
        long_audio_s=a.long_audio_s, segmenter=a.segmenter, window_s=a.window_s, vad_model_dir=a.vad_model_dir,
        progress=not a.quiet and sys.stderr.isatty(),
    )
    return _print_results(_in_order(pairs), a.json, a.timestamps)


def cmd_info(a) -> int:
    import torch

    from ._ext import build_info

    info = build_info()
    info["cuda_available"] = torch.cuda.is_available()
    print(json.dumps(info, indent=1))
    return 0


def cmd_demo(a) -> int:
    if a.random_model:
        from .synthetic import run_demo

        return run_demo(a)
    from .default_model import DEFAULT_DIR, DefaultModelError
    from .demo import run_shipped_demo

    if not (DEFAULT_DIR / "SHA256SUMS").is_file():
        # a checkout before the first trained model was shipped: say so, and show what can be shown
        print("note: no trained model is shipped in this checkout yet; running the demo on random weights "
              "(`--random-model`)\n", flush=True)
        from .synthetic import run_demo

        return run_demo(a)
    try:
        return run_shipped_demo(a)
    except DefaultModelError as e:
        print(f"error: {e}\n(`paraformer-ext demo --random-model` runs the demo on random weights)", file=sys.stderr)
        return 2


def cmd_train(a) -> int:
    from .training.distributed import RankLostError
    from .training.trainer import TrainConfig, train

    cfg = TrainConfig(**{k: v for k, v in vars(a).items() if k not in ("cmd", "fn", "quiet")}, progress=not a.quiet)
    try:
        train(cfg)
    except KeyboardInterrupt:
        return 130  # the checkpoint is saved; the trainer said where
    except (ValueError, FileNotFoundError) as e:  # bad data lists, model directories, options: the message says which
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RankLostError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    return 0


def cmd_make_corpus(a) -> int:
    from .data.corpus import CorpusToolError, make_corpus

    try:
        summary = make_corpus(a.out, a.hours, seed=a.seed, workers=a.workers, progress=not a.quiet)
    except (CorpusToolError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split, s in summary["splits"].items():
        print(f"{a.out}/{split}.jsonl: {s['utterances']} utterances, {s['hours']} h")
    print(f"{a.out}/tokens.json: the token list to train with (--tokens)")
    return 0


def cmd_train_lm(a) -> int:
    from .lm import LMError, NgramLM
    from .text import TokenList

    def texts():
        for path in a.text:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if line:
                        yield json.loads(line).get("target", "") if path.endswith(".jsonl") else line

    try:
        tokens = TokenList.load(a.tokens)
        lm = NgramLM.estimate(NgramLM.token_sentences(texts(), tokens), order=a.order, vocab=list(tokens),
                              min_count=[int(x) for x in a.min_count.split(",")] if a.min_count else None,
                              progress=None if a.quiet else (lambda m: print(m, file=sys.stderr)))
        out = lm.write_arpa(a.out)
    except (LMError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{out}: {lm}")
    return 0


def _train_lm_parser(sub) -> None:
    t = sub.add_parser("train-lm", help="estimate a token n-gram LM (ARPA) for --lm from training text")
    t.add_argument("out", help="the ARPA file to write (.arpa, or .arpa.gz compressed)")
    t.add_argument("text", nargs="+", help="training text: FunASR jsonl (its \"target\" fields) or one sentence per line")
    t.add_argument("--tokens", required=True, help="the model's tokens.json / tokens.txt: the LM's units")
    t.add_argument("--order", type=int, default=3, help="n-gram order (default: 3)")
    t.add_argument("--min-count", default=None, metavar="C1,C2,...",
                   help="per order, drop n-grams seen fewer times (default: 1,1,2,...)")
    t.add_argument("--quiet", action="store_true", help="no progress messages")
    t.set_defaults(fn=cmd_train_lm)


def _corpus_parser(sub) -> None:
    c = sub.add_parser("make-corpus", help="synthesize a Mandarin training corpus with espeak-ng and sox (FunASR jsonl lists)")
    c.add_argument("out", help="output directory: train/valid/test.jsonl, audio/, tokens.json, corpus.json")
    c.add_argument("--hours", type=float, required=True, help="total audio hours (train 96%%, valid 2%%, test 2%%)")
    c.add_argument("--seed", type=int, default=0, help="the corpus is a function of the seed (default: 0)")
    c.add_argument("--workers", type=int, default=None, help="synthesis processes (default: one per CPU)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(fn=cmd_make_corpus)
def cmd_serve(a) -> int:
    import asyncio
    import logging

    from .hotwords import HotwordError
    from .recognizer import load

    try:
        from .server import Server, ServerOptions, serve_forever
    except ImportError as e:
        print(f"error: the server needs the websockets library ({e}): pip install 'paraformer_ext[server]'", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    if a.certfile in ("", "0"):  # FunASR's servers' way of saying "no TLS"
        a.certfile = None
    if a.keyfile and not a.certfile:
        print("error: --keyfile without --certfile", file=sys.stderr)
        return 2
    from .lm import LMError

    try:
        asr = load(a.model, device=a.device, dtype=a.dtype, kernels=not a.no_kernels, quantize=a.quantize,
                   quantize_output_layer=a.quantize_output_layer, cif_threshold=a.cif_threshold,
                   hotword_token_bonus=a.hotword_token_bonus, **_lm_kwargs(a))
    except LMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    online = None
    if a.online_model:
        # the streaming model shares the device, dtype and kernels; quantization and the CIF threshold are the
        # offline model's options
        online = load(a.online_model, device=a.device, dtype=a.dtype, kernels=not a.no_kernels)
    opt = ServerOptions(host=a.host, port=a.port, certfile=a.certfile or None, keyfile=a.keyfile or None,
                        hotword_file=a.hotword, max_connections=a.max_connections, max_batch_frames=a.max_batch_frames,
                        max_wait_s=a.max_wait_ms / 1000, idle_timeout_s=a.idle_timeout_s)
    try:
        server = Server(asr, opt, online=online)
    except (OSError, ValueError, HotwordError) as e:  # a streaming --model, an offline --online-model, ...
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        asyncio.run(serve_forever(server))
    except (OSError, HotwordError) as e:  # the port is taken, the certificate or the hotword file cannot be read, ...
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _serve_parser(sub) -> None:
    s = sub.add_parser("serve", help="a FunASR-protocol websocket server with a web page (see README: Server)")
    s.add_argument("--model", default=None, help="FunASR model directory (default: the shipped model, synthetic speech only)")
    s.add_argument("--online-model", default=None, metavar="DIR",
                   help="a streaming model directory (model: ParaformerStreaming, e.g. paraformer-zh-streaming): the "
                        "online and 2pass modes' partials come from its streams, at the client's chunk_size; "
                        "without it the open segment is re-decoded with --model")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 opens it to the network)")
    s.add_argument("--port", type=int, default=10095, help="port (default 10095, FunASR's)")
    s.add_argument("--certfile", default=None, help="TLS certificate (wss:// and https://); without it, plain ws://")
    s.add_argument("--keyfile", default=None, help="TLS private key")
    s.add_argument("--hotword", default=None, metavar="FILE",
                   help="hotwords for every connection, FunASR's format: `word weight` per line (weight 1-100, default "
                        "20); a client's own hotwords are merged in, its weights winning")
    s.add_argument("--hotword-token-bonus", type=float, default=2.0, metavar="BETA",
                   help="log-posterior bonus per matched hotword token (default: 2.0, FunASR's)")
    s.add_argument("--max-connections", type=int, default=256, help="connections served at once (default 256)")
    s.add_argument("--max-wait-ms", type=float, default=20.0,
                   help="how long the worker waits for other connections' speech to fill a batch (default 20)")
    s.add_argument("--idle-timeout-s", type=float, default=120.0, help="close connections silent this long (default 120; 0: never)")
    s.add_argument("--verbose", action="store_true", help="log connections and batches")
    _add_model_args(s)
    s.set_defaults(fn=cmd_serve)


def _train_parser(sub) -> None:
    from .training.trainer import TrainConfig  # its defaults are the CLI's

    r = sub.add_parser("train", help="fine-tune a FunASR Paraformer directory (output: a FunASR directory)")
    r.add_argument("--train-data", required=True, help="FunASR jsonl (key, source, target), or WAV_SCP,TEXT, or a dir with wav.scp and text")
    r.add_argument("--valid-data", required=True, help="the same for validation (loss and CER each epoch)")
    r.add_argument("--output-dir", required=True, help="checkpoints/ and the final model.pt, config.yaml, am.mvn, tokens.json")
    r.add_argument("--init", default=None, help="the FunASR model directory to start from")
    r.add_argument("--config", default=None, help="instead of --init: train from scratch with this FunASR config.yaml")
    r.add_argument("--tokens", default=None, help="with --config: the token list (tokens.json or tokens.txt)")
    for name, typ, what in (("epochs", int, "passes over the training data"),
                            ("max-batch-frames", int, "padded 60 ms frames per batch"),
                            ("lr", float, "peak learning rate (reached at --warmup steps)"),
                            ("warmup", int, "warmup steps of FunASR's warmuplr schedule"),
                            ("schedule-offset", int, "continue an earlier run's schedule after this many of its "
                             "optimizer steps (the lr ramps to it over --warmup steps); 0: a new schedule"),
                            ("accum-grad", int, "batches per optimizer step"),
                            ("clip", float, "gradient norm clipping"),
                            ("save-every-min", float, "minutes between checkpoints (also one at each epoch end)"),
                            ("keep-best", int, "average the best K epochs by validation loss"),
                            ("seed", int, "seed of the batch order, dropout, SpecAug and GLM draws")):
        default = getattr(TrainConfig, name.replace("-", "_"))
        r.add_argument(f"--{name}", type=typ, default=default, help=f"{what} (default: {default})")
    r.add_argument("--sampling-ratio", type=float, default=None,
                   help="the GLM sampler's ratio λ in [0, 1] (0: a vanilla non-autoregressive decoder; default: the "
                        "config's model_conf.sampling_ratio)")
    r.add_argument("--mwer-weight", type=float, default=0.0,
                   help="> 0 adds MWER with negative sampling at this weight (default: 0, off)")
    r.add_argument("--no-cache-features", dest="cache_features", action="store_false",
                   help="recompute features every epoch instead of keeping them in memory (fp16, ~67 MB per hour)")
    r.add_argument("--bf16", action="store_true",
                   help="bf16 autocast for the forward pass (float32 weights, gradients and optimizer); on a CPU "
                        "without AVX-512 BF16/AMX it is emulated and slower than float32")
    r.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoints/last.pt")
    r.add_argument("--strict", action="store_true", help="stop at the first bad data line instead of skipping it")
    r.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to train (default: cpu)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(fn=cmd_train)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="paraformer-ext", description="FunASR-exact Paraformer speech recognition")
    sub = ap.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("transcribe", help="transcribe audio files with a FunASR Paraformer model directory")
    t.add_argument("--model", default=None, help="FunASR model directory (model.pt, config.yaml, am.mvn, tokens.json); "
                   "default: the small model shipped with paraformer_ext (espeak-ng synthetic Mandarin only)")
    t.add_argument("audio", nargs="+", help="audio files (wav/flac/ogg...; any sample rate, mono or stereo)")
    t.add_argument("--timestamps", action="store_true", help="add per-word [start_ms, end_ms] (FunASR's timestamps)")
    t.add_argument("--json", action="store_true", help="one JSON object per input: key, text, timestamp, token_ids")
    t.add_argument("--hotword", default=None, metavar="FILE",
                   help="hotword file, FunASR's format: `word weight` per line (weight 1-100, default 20); results "
                        "then list the hotwords found")
    t.add_argument("--hotword-token-bonus", type=float, default=2.0, metavar="BETA",
                   help="log-posterior bonus per matched hotword token (default: 2.0, FunASR's)")
    _add_model_args(t)
    _engine_args(t)
    t.set_defaults(fn=cmd_transcribe)

    d = sub.add_parser("demo", help="the shipped model on held-out synthetic speech, then kernels vs reference timing")
    d.add_argument("--random-model", action="store_true",
                   help="instead: a random-weight model of --preset on synthetic noise-speech (timings of bigger models)")
    d.add_argument("--preset", default="small", choices=["small", "large"], help="with --random-model: model geometry (default: small)")
    d.add_argument("--utterances", type=int, default=8, help="number of synthetic utterances (default: 8)")
    d.add_argument("--workdir", default=None, help="where to write the demo model and audio (default: a cache dir)")
    _add_model_args(d)
    d.set_defaults(fn=cmd_demo)

    _train_parser(sub)
    _train_lm_parser(sub)
    _corpus_parser(sub)
    _serve_parser(sub)
    sub.add_parser("client", help="send files to a FunASR-protocol websocket server (see `client --help`)", add_help=False)

    i = sub.add_parser("info", help="what was compiled (CPU/CUDA kernels, archs, torch version)")
    i.set_defaults(fn=cmd_info)

    sub.add_parser("vad", help="speech segments [[start_ms, end_ms], ...] with FunASR's FSMN-VAD (see `vad --help`)",
                   add_help=False)

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["client"]:
        from .server.client import client_main

        return client_main(argv[1:])
    if argv[:1] == ["vad"]:
        from .vad.cli import vad_main

        return vad_main(argv[1:])
    a = ap.parse_args(argv)
    from .default_model import DefaultModelError

    try:
        return a.fn(a)
    except DefaultModelError as e:  # no --model and the shipped model is missing or damaged
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
