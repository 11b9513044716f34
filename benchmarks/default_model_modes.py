"""What each inference mode costs on a trained model: held-out test CER of the default model (or any model trained
on the synthetic corpus) with the kernels, without its language model (greedy), with the plain reference, bf16, int8
and the dynamic CIF threshold (each with the LM, as load() decodes), with token agreement against float32 and
the time to transcribe the split, all in one run.

    .venv/bin/python benchmarks/default_model_modes.py --corpus RUNS_DIR/corpus100 \
        --json benchmarks/results/default_model_modes.json [--model DIR] [--threads 2]

The half-precision and int8 measurements elsewhere (precision.py, int8_report.py) use random-weight checkpoints,
whose decisions are far closer than a trained model's; this one counts recognition errors.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from paraformer_ext.data.evaluate import read_rows, score  # noqa: E402
from paraformer_ext.recognizer import load  # noqa: E402

MODES = {
    "float32 (kernels)": {},
    "float32, no LM (greedy)": {"lm": None},
    "float32 reference (kernels=False)": {"kernels": False},
    "bf16": {"dtype": torch.bfloat16},
    "int8": {"quantize": "int8"},
    "dynamic CIF threshold": {"cif_threshold": "dynamic"},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True, help="a make-corpus directory (its test split is used)")
    ap.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = read_rows(a.corpus / f"{a.split}.jsonl")
    wavs = [str(a.corpus / r["source"]) for r in rows]
    out, base = {}, None
    for name, kw in MODES.items():
        asr = load(a.model, **kw)
        asr.transcribe(wavs[:8])  # warm-up (int8: the quantized file is made here)
        t0 = time.perf_counter()
        res = asr.transcribe(wavs)
        secs = time.perf_counter() - t0
        bad = [r for r in res if "error" in r]
        if bad:
            raise SystemExit(f"{name}: {len(bad)} files failed, first: {bad[0]}")
        ids = [r["token_ids"] for r in res]
        base = base or ids
        m = score(rows, [r["text"] for r in res])
        same = sum(x == y for x, y in zip(ids, base))
        out[name] = {"cer": m["cer"], "sub": m["sub"], "del": m["del"], "ins": m["ins"],
                     "homophone_error_rate": m["homophone_error_rate"], "sentence_accuracy": m["sentence_accuracy"],
                     "utterances_identical_to_float32": same, "seconds": round(secs, 2)}
        print(f"{name:36s} CER {m['cer']:.2%}  sub/del/ins {m['sub']}/{m['del']}/{m['ins']}  "
              f"identical to float32 {same}/{len(ids)}  {secs:.1f} s", flush=True)
    report = {"model": a.model or "the shipped default model", "corpus": str(a.corpus), "split": a.split,
              "utterances": len(rows), "chars": sum(len(r["target"]) for r in rows), "modes": out,
              "threads": a.threads, "machine": platform.platform(), "processor": platform.processor(),
              "command": "benchmarks/default_model_modes.py " + " ".join(sys.argv[1:])}
    if a.json:
        a.json.write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
