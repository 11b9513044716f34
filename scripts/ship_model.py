"""Evaluate a model trained on the synthetic corpus and ship it as paraformer_ext's default model.

    .venv/bin/python scripts/ship_model.py TRAINED_DIR CORPUS_DIR [--timestamp-utts 40]

Writes paraformer_ext/models/zh-synthetic/ (model.pt in float16, config.yaml,
am.mvn, tokens.json, lm.arpa.gz, example.wav + examples.jsonl, MODEL_CARD.md, SHA256SUMS) and
benchmarks/results/default_model.json (test CER by voice / speed / noise, homophone error rate, timestamp
error, measured as shipped: float16 weights with the language model that load() uses by default; beside it the
CER of the acoustic model alone and of the float32 weights). The language model is TRAINED_DIR/lm.arpa.gz
(`paraformer-ext train-lm`, made by train_default_model.sh from the corpus's training text) or --lm. The held-out examples are the first test utterances in key order; example.wav is the first of them the
model transcribes exactly (the card says how many of the first ones it gets right).
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from paraformer_ext.bundled import write_sums  # noqa: E402
from paraformer_ext.data.corpus import PITCH_RANGES, SPEED_RANGE, installed_variants  # noqa: E402
from paraformer_ext.data.evaluate import evaluate, read_rows, timestamp_error  # noqa: E402
from paraformer_ext.default_model import DEFAULT_DIR  # noqa: E402
from paraformer_ext.recognizer import LM_FILE, load  # noqa: E402

N_EXAMPLES = 5


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trained", help="the trainer's output directory (model.pt, config.yaml, am.mvn, tokens.json, training.yaml)")
    ap.add_argument("corpus", help="the make-corpus directory it was trained on")
    ap.add_argument("--timestamp-utts", type=int, default=40, help="test sentences re-synthesized syllable by syllable")
    ap.add_argument("--out", default=str(DEFAULT_DIR))
    ap.add_argument("--lm", type=Path, default=None, help="the ARPA language model to ship (default: TRAINED/lm.arpa.gz)")
    ap.add_argument("--report-only", type=Path, metavar="JSON",
                    help="evaluate only (test CER by voice / speed / noise, timestamps) into JSON; ship nothing")
    a = ap.parse_args()
    trained, corpus, out = Path(a.trained), Path(a.corpus), Path(a.out)

    final = out
    if not a.report_only:  # built aside: a refused model leaves nothing behind
        out = out.with_name(out.name + ".partial")
        shutil.rmtree(out, ignore_errors=True)
        (out / "examples").mkdir(parents=True)
        sd = torch.load(trained / "model.pt", map_location="cpu", weights_only=True)
        # float16 halves the file and the loader casts back to float32 (the test CER of both is reported, so the
        # cost of the rounding is measured, not assumed). decoder.embed, which only training's GLM sampler reads,
        # stays (1.5 MB): training continues from the shipped model across machines (train_default_model.sh)
        sd = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
        torch.save(sd, out / "model.pt")
        for name in ("config.yaml", "am.mvn", "tokens.json"):
            shutil.copyfile(trained / name, out / name)
        lm_src = a.lm or trained / LM_FILE
        if not lm_src.is_file():
            raise SystemExit(f"no language model at {lm_src}: make one with `paraformer-ext train-lm {lm_src} "
                             f"{corpus}/train.jsonl --tokens {trained}/tokens.json` or pass --lm")
        shutil.copyfile(lm_src, out / LM_FILE)

    def test_cer(asr):
        t0 = time.perf_counter()
        m = evaluate(asr, corpus, "test")
        return m, time.perf_counter() - t0

    lm_arg = (a.lm or "auto") if a.report_only else out / LM_FILE  # the float32 weights with the shipped LM
    test32, test_s = test_cer(load(trained, lm=lm_arg))
    print(f"float32 test CER {test32['cer']:.2%} ({test32['utterances']} utterances), homophone error rate "
          f"{test32['homophone_error_rate']:.2%}", flush=True)
    asr = load(trained if a.report_only else out, lm=lm_arg)
    test = test32 if a.report_only else test_cer(asr)[0]
    no_lm = test_cer(load(trained if a.report_only else out, lm=None))[0]
    print(f"{'' if a.report_only else 'float16 (shipped) '}test CER {test['cer']:.2%}"
          f"{'' if asr.lm is None else f' with its LM ({asr.lm})'}; the acoustic model alone {no_lm['cer']:.2%}",
          flush=True)
    rows = read_rows(corpus / "test.jsonl")
    ts = timestamp_error(asr, rows[: a.timestamp_utts], installed_variants(), seed=0)
    print(f"timestamps: {ts}", flush=True)
    training = yaml.safe_load((trained / "training.yaml").read_text(encoding="utf-8")) if (trained / "training.yaml").is_file() else {}
    if a.report_only:
        report = {"model": str(trained), "corpus": str(corpus), "test": test, "test_without_lm": no_lm, "timestamps": ts,
                  "test_seconds_cpu": round(test_s, 1), "training": training,
                  "command": f"scripts/ship_model.py {a.trained} {a.corpus} --report-only {a.report_only}"}
        a.report_only.write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {a.report_only}")
        return 0

    ex_rows, got = rows[:N_EXAMPLES], []
    res = asr.transcribe([str(corpus / r["source"]) for r in ex_rows], timestamps=True)
    example = None
    with open(out / "examples.jsonl", "w", encoding="utf-8") as f:
        for r, h in zip(ex_rows, res):
            x, sr = sf.read(corpus / r["source"], dtype="int16")
            rel = f"examples/{r['key']}.wav"
            sf.write(out / rel, x, sr, subtype="PCM_16")
            got.append(h["text"].replace(" ", "") == r["target"])
            if got[-1] and example is None:
                example = rel
            f.write(json.dumps({"key": r["key"], "source": rel, "target": r["target"], "pinyin": r["pinyin"],
                                "voice": r["voice"], "speed": r["speed"]}, ensure_ascii=False) + "\n")
    if example is None:
        shutil.rmtree(out)
        raise SystemExit(f"the model transcribes none of the first {N_EXAMPLES} test utterances exactly: not shipped")
    shutil.copyfile(out / example, out / "example.wav")
    ex_target = next(r["target"] for r in ex_rows if f"examples/{r['key']}.wav" == example)
    (out / "example.txt").write_text(ex_target + "\n", encoding="utf-8")

    corpus_info = json.loads((corpus / "corpus.json").read_text(encoding="utf-8"))
    n_params = sum(v.numel() for v in sd.values())
    cfg = yaml.safe_load((trained / "config.yaml").read_text(encoding="utf-8"))
    enc, dec = cfg["encoder_conf"], cfg["decoder_conf"]
    steps = training.get("schedule_steps")
    schedule_line = ("" if steps is None else
                     f"\nLearning-rate schedule position: {steps} optimizer steps; training that continues from this model "
                     f"takes `--init` this directory and `--schedule-offset {steps}` (scripts/train_default_model.sh does).\n")
    settings = {k: v for k, v in training.get("config", {}).items()
                if k not in ("train_data", "valid_data", "output_dir", "init", "resume", "progress")}  # this machine's paths
    card = f"""# zh-synthetic: paraformer_ext's default model

A small Paraformer ({n_params / 1e6:.2f} M parameters in this file; architecture: d {enc['output_size']},
{enc['attention_heads']} heads, FFN {enc['linear_units']}, {enc['num_blocks']} encoder and {dec['num_blocks']} decoder SAN-M
blocks, {len(json.loads((trained / 'tokens.json').read_text(encoding='utf-8')))} tokens; the recipe
`paraformer_ext/data/recipes/syn-c.yaml`) trained from scratch by paraformer_ext's own trainer on its synthetic Mandarin corpus.

**It knows only espeak-ng synthetic speech.** It has never heard a human voice; on real speech its output is
meaningless. For real Mandarin use a FunASR model directory (`paraformer_ext.load(DIR)`).

## Data
`paraformer-ext make-corpus CORPUS --hours {corpus_info['hours_requested']:g} --seed {corpus_info['seed']}`: {corpus_info['splits']['train']['hours']} h of training
speech ({corpus_info['splits']['train']['utterances']} utterances), {corpus_info['splits']['test']['utterances']}
held-out test utterances whose texts never occur in training. Texts: words sampled from jieba's dict.txt (MIT)
by frequency^0.5, 8–16 characters, the 3000 most frequent characters; speech: pypinyin (MIT) tone-numbered pinyin
spoken by espeak-ng's `cmn-latn-pinyin` voice (the espeak-ng program, GPL-3.0, is called, not shipped) with
{len(corpus_info['variants'])} voice variants (those whose tones come through: benchmarks/espeak_tones.py), speed
{SPEED_RANGE[0]}–{SPEED_RANGE[1]}, pitch 20–80, tone excursions widened by SSML prosody range {' / '.join(PITCH_RANGES)},
sox reverb / band limits and white/pink/brown noise at 10–40 dB SNR.

## Held-out results (this model, CPU, `scripts/ship_model.py`)
- Test CER: **{test['cer']:.2%}** as `load()` runs it, with its language model (`{LM_FILE}`: {asr.lm.lm.order}-gram over
  the tokens, estimated on the training text by `paraformer-ext train-lm`, weight {asr.lm.weight:g}); the float32 weights before
  rounding: {test32['cer']:.2%}; {test['chars']} characters; substitutions {test['sub']}, deletions
  {test['del']}, insertions {test['ins']}; sentences exactly right: {test['sentence_accuracy']:.1%}.
- The acoustic model alone (`load(lm=None)`, greedy): **{no_lm['cer']:.2%}** (homophones {no_lm['homophone_error_rate']:.2%}).
- Homophone error rate (substitutions by a character that sounds the same): {test['homophone_error_rate']:.2%}
  of characters ({test['homophone_share_of_substitutions']:.0%} of the substitutions). Without word context a
  model cannot do better than ≈ 25 % CER on this corpus (training.md §5).
- Timestamps ({ts['utterances']} test sentences re-synthesized syllable by syllable, so the true boundaries are
  known; {ts['matched_chars']} correctly recognized characters): mean absolute start error
  {ts['mean_abs_start_ms']} ms, end error {ts['mean_abs_end_ms']} ms.
- By voice, speed and noise: `benchmarks/results/default_model.json`.
- Examples: the first {N_EXAMPLES} test utterances are in `examples/` (`examples.jsonl` has their texts); the model
  transcribes {sum(got)} of them exactly. `example.wav` is the first of those ({ex_target}).

## Training
`scripts/train_default_model.sh`: stage 1, the recipe from scratch on the first 12 h of this corpus (33 epochs);
stage 2, continued on all of it; stage 3, where a new machine had lost stage 2's run, continued from the model
shipped before (its schedule position as `--schedule-offset`). The last run's settings (as the run that exported
it had them; stage 2's base learning rate changed between epochs, see the script): {json.dumps(settings, ensure_ascii=False)}

Validation (225 held-out sentences) after each epoch of that run: {'; '.join(f"{e['epoch']}: CER {e['valid_cer']:.2%}, loss {e['valid_loss']:.3f}" for e in training.get('history', []))}.

Averaged checkpoints: {', '.join(training.get('averaged', []))}.
{schedule_line}
## Licences
Weights: trained here, MIT like paraformer_ext. Training text: jieba's dict.txt (MIT). The audio examples are
espeak-ng output (program output is not covered by espeak-ng's GPL).

## Files
`model.pt` (FunASR's Paraformer state dict in float16, cast to float32 when loaded; `decoder.embed`, which only
training reads, is kept so that training can continue from this directory), `config.yaml`,
`am.mvn`, `tokens.json`: a FunASR model directory; `{LM_FILE}`: the language model (ARPA, KenLM and SRILM read
it). `SHA256SUMS` is checked at every load.
"""
    (out / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    write_sums(out)
    shutil.rmtree(final, ignore_errors=True)
    out.rename(final)
    out = final
    results = {"model": str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out), "test": test,
               "test_float32": test32, "test_without_lm": no_lm,
               "lm": {"file": LM_FILE, "order": asr.lm.lm.order, "ngrams": len(asr.lm.lm), "weight": asr.lm.weight,
                      "beam": asr.lm.beam, "topk": asr.lm.topk},
               "timestamps": ts, "examples_exact": sum(got), "examples": N_EXAMPLES,
               "test_seconds_cpu": round(test_s, 1), "parameters": n_params, "training": training,
               "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform()},
               "command": f"scripts/ship_model.py {a.trained} {a.corpus}"}
    res_path = ROOT / "benchmarks" / "results" / "default_model.json"
    res_path.write_text(json.dumps(results, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"shipped {out} ({size / 1e6:.1f} MB), results in {res_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
