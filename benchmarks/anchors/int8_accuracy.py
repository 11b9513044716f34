"""What int8 (and bf16) cost in accuracy, ours against FunASR's ONNX Runtime deployment, on a TRAINED model.

    .venv/bin/python benchmarks/anchors/int8_accuracy.py --model MODEL_DIR --corpus CORPUS_DIR \
        [--split test] [--limit 400] [--threads 2] [--json benchmarks/results/int8_accuracy.json]

Why: cpu_vs_onnx.py's token agreement is measured on random paraformer-large weights, where it is chaotic (on
our int8, carrying the encoder's QKV activations in ~15 bits instead of 8, a strictly more accurate product,
LOWERED the agreement with float32 from 76 % to 71 % on the same audio): a random model's CIF fires sit next to
the threshold, and any change moves some of them. A trained model's test CER says what a precision costs.

MODEL_DIR: a FunASR model directory (the shipped default model, or a trainer's output); FunASR's own exporter
(export_onnx.py, the anchors venv: benchmarks/anchors/setup.sh) writes model.onnx / model_quant.onnx beside it
when they are missing (into a copy when MODEL_DIR is not writable). CORPUS_DIR: `paraformer-ext make-corpus`'s
output; the first --limit utterances of --split in key order are transcribed by every system (worker.py, one
process per system, --batch utterances per call) and scored: CER against the text, and token agreement with ours-fp32 and
with the system's own float32 (ort-int8 with ort-fp32).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import e2e  # noqa: E402
from common import REPO  # noqa: E402
from protocol import ANCHORS_PYTHON, ask, finish_all, markdown_table  # noqa: E402
from worker import ORT  # noqa: E402

sys.path.insert(0, str(REPO))
SYSTEMS = ["ours-fp32", "ours-int8", "ours-bf16", "ort-fp32", "ort-int8"]
OWN_FP32 = {"ours-int8": "ours-fp32", "ours-bf16": "ours-fp32", "ort-int8": "ort-fp32"}


def onnx_model_dir(model: Path, anchors_python: Path) -> Path:
    """model, or a copy of it, with FunASR's model.onnx and model_quant.onnx."""
    if (model / "model.onnx").is_file() and (model / "model_quant.onnx").is_file():
        return model
    if not anchors_python.is_file():
        raise SystemExit(f"{anchors_python} missing: run benchmarks/anchors/setup.sh first (FunASR's exporter)")
    out = model
    if not os.access(model, os.W_OK):
        out = Path(tempfile.mkdtemp(prefix="int8acc_")) / model.name
        shutil.copytree(model, out)
    print(f"exporting {out} with FunASR's exporter", flush=True)
    subprocess.run([str(anchors_python), str(HERE / "export_onnx.py"), str(out)], check=True, stdout=subprocess.DEVNULL)
    return out


def run_system(system: str, model: Path, items_json: Path, names: list[str], threads: int, anchors_python: Path,
               timeout: float) -> dict:
    py = str(anchors_python) if system in ORT else sys.executable
    w = e2e.WorkerProc([py, str(HERE / "worker.py"), "--system", system, "--model", str(model), "--threads",
                        str(threads), "--items", str(items_json)], threads)
    row = {"ready": json.loads(w.expect("READY", timeout))}
    wall = 0.0
    for i, name in enumerate(names):
        wall += ask(w, {"cmd": "call", "item": name}, timeout)["wall_s"]
        print(f"\r{system}: {i + 1}/{len(names)} batches", end="", flush=True)
    print(flush=True)
    rows = {system: row}
    finish_all({system: w}, rows, timeout)
    row["wall_s"] = wall
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16, help="utterances per call")
    ap.add_argument("--systems", nargs="+", default=SYSTEMS, choices=SYSTEMS)
    ap.add_argument("--anchors-python", type=Path, default=ANCHORS_PYTHON)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--note", default="", help="free text kept in the JSON (e.g. what else loaded the machine)")
    a = ap.parse_args()

    from paraformer_ext.data.evaluate import read_rows, score
    from paraformer_ext.text import TokenList

    t0 = time.perf_counter()
    model = onnx_model_dir(a.model.resolve(), a.anchors_python) if any(s in ORT for s in a.systems) else a.model
    rows = sorted(read_rows(a.corpus / f"{a.split}.jsonl"), key=lambda r: r["key"])[: a.limit]
    paths = [str(a.corpus / r["source"]) for r in rows]
    items = {f"batch{i // a.batch:04d}": paths[i:i + a.batch] for i in range(0, len(paths), a.batch)}
    names = list(items)
    tokens = TokenList.load(model / "tokens.json")
    audio_s = sum(r["source_len"] for r in rows) / 1000
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        items_json = Path(tmp) / "items.json"
        items_json.write_text(json.dumps(items))
        for s in a.systems:
            r = run_system(s, model, items_json, names, a.threads, a.anchors_python, a.timeout)
            ids = [u for n in names for u in r["token_ids"][n]]
            hyps = ["".join(tokens.ids_to_tokens(u)) for u in ids]
            sc = score(rows, hyps)
            results[s] = {"ids": ids, "cer": sc["cer"], "sentence_accuracy": sc["sentence_accuracy"],
                          "homophone_error_rate": sc["homophone_error_rate"], "rtf": r["wall_s"] / audio_s,
                          "peak_rss_mb": r.get("peak_rss_mb"), "setup_peak_rss_mb": r["ready"].get("setup_peak_rss_mb")}
    table = []
    for s, r in results.items():
        for ref_name, key in (("ours-fp32", "agreement_with_ours_fp32"), (OWN_FP32.get(s), "agreement_with_own_fp32")):
            if ref_name in results and ref_name != s:
                c = e2e.compare(results[ref_name]["ids"], r["ids"])
                r[key] = 1 - c["token_edit_rate"]
        own = OWN_FP32.get(s)
        r["cer_change_vs_own_fp32"] = r["cer"] - results[own]["cer"] if own in results else None
        pct = lambda x: "-" if x is None else f"{100 * x:.2f}%"  # noqa: E731
        table.append([s, pct(r["cer"]), "-" if r["cer_change_vs_own_fp32"] is None else f"{100 * r['cer_change_vs_own_fp32']:+.2f}",
                      pct(r.get("agreement_with_own_fp32")), pct(r.get("agreement_with_ours_fp32")), f"{r['rtf']:.4f}",
                      "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}"])
    print()
    print(markdown_table(["system", "test CER", "CER change vs its fp32 (points)", "token agreement with its fp32",
                          "with ours-fp32", f"RTF (batches of {a.batch})", "peak RSS MB (calls)"], table))
    print(f"\n{len(rows)} {a.split} utterances ({audio_s:.0f} s) of {a.corpus}, model {a.model}, {a.threads} threads, "
          f"{time.perf_counter() - t0:.0f} s")
    if a.json:
        for r in results.values():
            r.pop("ids")
        a.json.write_text(json.dumps({
            "command": "benchmarks/anchors/int8_accuracy.py " + " ".join(sys.argv[1:]), "model": str(a.model),
            "corpus": str(a.corpus), "split": a.split, "utterances": len(rows), "audio_s": audio_s,
            "threads": a.threads, "batch": a.batch, "note": a.note, "machine": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "systems": results}, indent=1) + "\n")
        print("wrote", a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
