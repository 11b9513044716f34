"""The paper's ablation on the synthetic corpus: the GLM sampler's ratio λ, an MWER fine-tune, the dynamic CIF
threshold, under one budget (same data, same seed, same epochs per row), scored on the held-out test split.

    .venv/bin/python benchmarks/ablation.py --corpus CORPUS --out RUNS [--epochs 8] [--mwer-epochs 2] [--bf16]

Rows (each one a `paraformer-ext train` command, printed and stored with its result, so every row can be rerun):
  glm-0.00 .. glm-1.00   from scratch with the recipe's architecture (paraformer_ext/data/recipes/syn-b.yaml),
                         --sampling-ratio λ (0: a vanilla non-autoregressive decoder)
  best+mwer              the best GLM row (valid CER) fine-tuned with --mwer-weight for --mwer-epochs
  best+ce                its control: the same fine-tune without the MWER term
  best, dynamic          the best GLM row decoded with cif_threshold="dynamic" (the paper's β = Σα / ⌈Σα⌉)
Each is scored with paraformer_ext.data.evaluate (CER, homophone error rate, substitutions / deletions /
insertions). A row whose output directory already has model.pt is not retrained; a row cut short resumes from
its last checkpoint, so the script can be stopped and started again. Writes benchmarks/results/ablation.json
and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from paraformer_ext.data.evaluate import evaluate  # noqa: E402
from paraformer_ext.recognizer import load  # noqa: E402

RECIPE = ROOT / "paraformer_ext" / "data" / "recipes" / "syn-b.yaml"
RATIOS = (0.0, 0.25, 0.5, 0.75, 1.0)


def train_command(a, out: Path, *, ratio: float | None = None, init: Path | None = None, mwer: float = 0.0,
                  epochs: int, lr: float, warmup: int) -> list[str]:
    cmd = [sys.executable, "-m", "paraformer_ext.cli", "train", "--train-data", str(a.corpus / "train.jsonl"),
           "--valid-data", str(a.corpus / "valid.jsonl"), "--output-dir", str(out), "--epochs", str(epochs),
           "--lr", str(lr), "--warmup", str(warmup), "--seed", str(a.seed), "--max-batch-frames",
           str(a.max_batch_frames), "--save-every-min", "10", "--keep-best", str(a.keep_best)]
    if init is None:
        cmd += ["--config", str(a.config), "--tokens", str(a.corpus / "tokens.json")]
    else:
        cmd += ["--init", str(init)]
    if ratio is not None:
        cmd += ["--sampling-ratio", str(ratio)]
    if mwer > 0:
        cmd += ["--mwer-weight", str(mwer)]
    if a.bf16:
        cmd.append("--bf16")
    if (out / "checkpoints" / "last.pt").is_file():
        cmd.append("--resume")
    return cmd


def _training_yaml(out: Path) -> dict:
    """The trainer's out/training.yaml ({} before the row has been exported)."""
    import yaml

    f = out / "training.yaml"
    return yaml.safe_load(f.read_text()) if f.is_file() else {}


def run_row(cmd: list[str], out: Path, keep_best: int) -> float:
    """Train unless out/model.pt exists; the row's training wall time in seconds (summed over the calls that
    trained it, kept in out/ablation_wall_s)."""
    wall_file = out / "ablation_wall_s"
    spent = float(wall_file.read_text()) if wall_file.is_file() else 0.0
    if (out / "model.pt").is_file() and _training_yaml(out).get("config", {}).get("keep_best") == keep_best:
        print(f"[ablation] {out.name}: trained already ({out / 'model.pt'})", flush=True)
        return spent
    # otherwise train, or (every epoch done, model.pt averaged over another K) resume only to re-export
    print(f"[ablation] {out.name}: {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    try:
        subprocess.run(cmd, check=True, cwd=ROOT)
    finally:
        out.mkdir(parents=True, exist_ok=True)
        wall_file.write_text(f"{spent + time.perf_counter() - t0:.1f}\n")
    return float(wall_file.read_text())


def best_valid_cer(out: Path) -> float:
    return min(h["valid_cer"] for h in _training_yaml(out)["history"])


def score(model_dir: Path, corpus: Path, **load_kw) -> dict:
    r = evaluate(load(model_dir, **load_kw), corpus, "test")
    keep = ("cer", "homophone_error_rate", "sub", "del", "ins", "sentence_accuracy", "chars", "utterances")
    return {k: r[k] for k in keep}


def table(rows: list[dict]) -> str:
    out = ["| row | test CER | homophone error rate | sub / del / ins | best valid CER | train wall |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        s = r["test"]
        out.append(f"| {r['row']} | {100 * s['cer']:.2f} % | {100 * s['homophone_error_rate']:.2f} % | "
                   f"{s['sub']} / {s['del']} / {s['ins']} | "
                   + (f"{100 * r['best_valid_cer']:.2f} %" if r.get("best_valid_cer") is not None else "-")
                   + f" | {r.get('train_wall_s', 0) / 60:.0f} min |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True, help="a make-corpus directory (train/valid/test.jsonl)")
    ap.add_argument("--out", type=Path, required=True, help="where each row's training run goes")
    ap.add_argument("--config", type=Path, default=RECIPE, help="the architecture (FunASR config.yaml)")
    ap.add_argument("--epochs", type=int, default=8, help="the budget of every GLM row")
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--warmup", type=int, default=400)
    ap.add_argument("--max-batch-frames", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-best", type=int, default=2,
                    help="model.pt of a row = the average of its K best epochs by validation loss; a short budget "
                    "is still improving fast, and the trainer's default of 5 would average early, worse epochs in")
    ap.add_argument("--bf16", action="store_true", help="train every row with bf16 autocast (CPUs with AMX or "
                    "AVX-512 BF16: 1.5-2x faster steps); the same for all rows, so the comparison stays fair")
    ap.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS))
    ap.add_argument("--mwer-weight", type=float, default=1.0)
    ap.add_argument("--mwer-epochs", type=int, default=2)
    ap.add_argument("--mwer-lr", type=float, default=2e-4)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "ablation.json")
    a = ap.parse_args(argv)
    for f in ("train.jsonl", "valid.jsonl", "test.jsonl", "tokens.json"):
        if not (a.corpus / f).is_file():
            ap.error(f"{a.corpus / f} is missing: make the corpus with `paraformer-ext make-corpus {a.corpus} --hours H`")
    a.out.mkdir(parents=True, exist_ok=True)

    rows = []
    for ratio in a.ratios:
        out = a.out / f"glm-{ratio:.2f}"
        cmd = train_command(a, out, ratio=ratio, epochs=a.epochs, lr=a.lr, warmup=a.warmup)
        wall = run_row(cmd, out, a.keep_best)
        rows.append({"row": f"GLM λ = {ratio:g}" + (" (vanilla NAR)" if ratio == 0 else ""), "dir": str(out), "ratio": ratio,
                     "command": shlex.join(cmd), "train_wall_s": wall, "best_valid_cer": best_valid_cer(out),
                     "test": score(out, a.corpus)})
        print(f"[ablation] {rows[-1]['row']}: test CER {100 * rows[-1]['test']['cer']:.2f} %", flush=True)

    best = min((r for r in rows if not r["row"].startswith("GLM λ = 0 ")), key=lambda r: r["best_valid_cer"])
    best_dir = Path(best["dir"])
    out = a.out / f"{best_dir.name}+mwer"
    cmd = train_command(a, out, init=best_dir, ratio=best["ratio"], mwer=a.mwer_weight, epochs=a.mwer_epochs,
                        lr=a.mwer_lr, warmup=1)
    wall = run_row(cmd, out, a.keep_best)
    rows.append({"row": f"{best['row']} + MWER ({a.mwer_epochs} epochs, weight {a.mwer_weight:g})", "dir": str(out),
                 "command": shlex.join(cmd), "train_wall_s": wall, "best_valid_cer": best_valid_cer(out),
                 "test": score(out, a.corpus)})
    # the control: the same continued training without the MWER term, so the MWER row's gain is not just the
    # extra epochs it trained
    out = a.out / f"{best_dir.name}+ce"
    cmd = train_command(a, out, init=best_dir, ratio=best["ratio"], epochs=a.mwer_epochs, lr=a.mwer_lr, warmup=1)
    wall = run_row(cmd, out, a.keep_best)
    rows.append({"row": f"{best['row']} + the same {a.mwer_epochs} epochs without MWER (control)", "dir": str(out),
                 "command": shlex.join(cmd), "train_wall_s": wall, "best_valid_cer": best_valid_cer(out),
                 "test": score(out, a.corpus)})
    rows.append({"row": f"{best['row']}, dynamic CIF threshold", "dir": str(best_dir),
                 "command": f"load({str(best_dir)!r}, cif_threshold='dynamic')", "train_wall_s": 0.0,
                 "best_valid_cer": None, "test": score(best_dir, a.corpus, cif_threshold="dynamic")})

    report = {"env": {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "command": shlex.join(sys.argv),
                      "python": platform.python_version(), "corpus": str(a.corpus), "config": str(a.config),
                      "budget": {"epochs": a.epochs, "lr": a.lr, "warmup": a.warmup, "seed": a.seed,
                                 "max_batch_frames": a.max_batch_frames, "mwer_epochs": a.mwer_epochs, "keep_best": a.keep_best,
                                 "bf16": a.bf16}},
              "rows": rows}
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print(table(rows))
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
