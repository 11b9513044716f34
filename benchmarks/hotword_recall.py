"""Hotword recall, precision, false alarms and CER inside / outside hotword spans (issue 14, hotwords.md §3).

    python benchmarks/hotword_recall.py --set RUNS/hotword_set100 --corpus RUNS/corpus100 \
        [--model DIR (default: the shipped model)] [--lm auto|none|ARPA] [--out benchmarks/results/hotwords_recall.json]

The set (paraformer_ext.data.hotword_eval.make_hotword_set, made on first use, seeded): unseen proper names with
a homophone-prone character, 3 sentences each (dev: 50 names, test: 100), plus sentences without them. The
model runs once per sentence; its log-posteriors are then searched with each hotword list (with the model's
language model, as load() decodes, unless --lm none: the baseline row is then greedy). β (token bonus) and
the weight w are chosen on dev (best F1 with ≤ 1 induced false alarm per 100 plain sentences and CER outside the
spans at most 0.5 points worse than greedy), once per list size, because a longer list gives more chances of a
false alarm: with the 50 dev names plus 50 distractor names for the test lists of 10 (the 100 test names in 10
groups, each sentence searched with its group's list) and 100 (the test names), and plus all 900 distractors
for the test list of 1,000 (the test names plus the 900 distractors, which no sentence speaks).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO  # noqa: E402

BETAS = (0.5, 1.0, 1.5, 2.0, 3.0)
WEIGHTS = (10, 20, 50)


def posteriors(asr, set_dir: Path, rows: list[dict], batch: int = 16) -> list[torch.Tensor]:
    """Each sentence's decoder log-posteriors (N, V), one model run per sentence."""
    from paraformer_ext.audio import load_audio

    p = asr.pipeline
    out = []
    for i in range(0, len(rows), batch):
        waves = [load_audio(str(set_dir / r["source"]), target_sr=p.sample_rate) for r in rows[i: i + batch]]
        lens = torch.tensor([w.numel() for w in waves])
        wave = torch.zeros(len(waves), int(lens.max()))
        for b, w in enumerate(waves):
            wave[b, : w.numel()] = w
        with torch.no_grad():
            feats, flens = p.features(wave.to(p.device), lens.to(p.device))
            g = p.model.greedy(feats, flens, log_posteriors=True)
        for b in range(len(waves)):
            out.append(g.log_posteriors[b, : int(g.token_num[b])].float().cpu())
    return out


def texts(asr, logps: list[torch.Tensor], graphs) -> list[str]:
    """Search each sentence's posteriors with its graph (None: no hotwords) as the pipeline does
    (Pipeline.search: with the recognizer's LM when it has one, else the hotword search, or argmax)."""
    from paraformer_ext.text import postprocess

    out = []
    for lp, g in zip(logps, graphs):
        ids = asr.pipeline.search(lp, g)[0]
        out.append(postprocess(ids.tolist(), asr.tokens)["text"])
    return out


def main() -> int:
    from paraformer_ext.data.evaluate import read_rows
    from paraformer_ext.data.hotword_eval import hotword_score, low_recall_words, make_hotword_set
    from paraformer_ext.recognizer import load

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", required=True, help="hotword set directory (made here when it has no hotwords.json)")
    ap.add_argument("--corpus", required=True, help="the corpus the model was trained on (its texts are excluded)")
    ap.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    ap.add_argument("--lm", default="auto", help="as load(lm=): auto (the model's lm.arpa.gz), none, or an ARPA file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/hotwords_recall.json"))
    a = ap.parse_args()
    set_dir = Path(a.set)
    if not (set_dir / "hotwords.json").is_file():
        print(f"making the hotword set in {set_dir}", flush=True)
        make_hotword_set(set_dir, a.corpus, seed=a.seed)
    lists = json.loads((set_dir / "hotwords.json").read_text(encoding="utf-8"))
    asr = load(a.model, lm=a.lm)
    t0 = time.perf_counter()
    rows = {s: read_rows(set_dir / f"{s}.jsonl") for s in ("hwdev", "hwtest")}
    logps = {s: posteriors(asr, set_dir, rows[s]) for s in rows}
    greedy = {s: texts(asr, logps[s], [None] * len(rows[s])) for s in rows}
    print(f"model runs: {time.perf_counter() - t0:.1f} s", flush=True)

    def run(split, words, w, beta, group_of=None):
        if group_of is None:
            g = asr.pipeline.compile_hotwords({h: w for h in words}, token_bonus=beta)
            graphs = [g] * len(rows[split])
        else:  # one list per group; a sentence is searched with its own group's list
            gs = [asr.pipeline.compile_hotwords({h: w for h in grp}, token_bonus=beta) for grp in words]
            graphs = [gs[group_of(k, r)] for k, r in enumerate(rows[split])]
        return texts(asr, logps[split], graphs)

    # --- dev: choose β and w, once per list size (more names, more chances of a false alarm) ----------------
    dev_r1 = low_recall_words(rows["hwdev"], greedy["hwdev"])

    def choose(dev_words, label):
        base = hotword_score(rows["hwdev"], greedy["hwdev"], dev_words, greedy["hwdev"], dev_r1)
        sweep, best = [], None
        for beta in BETAS:
            for w in WEIGHTS:
                s = hotword_score(rows["hwdev"], run("hwdev", dev_words, w, beta), dev_words, greedy["hwdev"], dev_r1)
                ok = (s["induced_false_alarms_per_100"] <= 1.0
                      and s["cer_outside_spans"] <= base["cer_outside_spans"] + 0.005)
                sweep.append({"token_bonus": beta, "weight": w, "admissible": ok,
                              **{k: v for k, v in s.items() if k != "per_word"}})
                if ok and (best is None or s["f1"] > best[2]):
                    best = (beta, w, s["f1"])
                print(f"dev, {label}, β={beta} w={w}: recall {s['recall']:.3f} precision {s['precision']:.3f} "
                      f"F1 {s['f1']:.3f} R1 recall {s['r1']['recall']:.3f} induced FA/100 "
                      f"{s['induced_false_alarms_per_100']} CER out {s['cer_outside_spans']:.4f}"
                      f"{'' if ok else ' (not admissible)'}", flush=True)
        if best is None:
            best = (min(BETAS), min(WEIGHTS), None)
            print(f"dev, {label}: no admissible (β, w): the test rows use the smallest", flush=True)
        return {"token_bonus": best[0], "weight": best[1], "dev_list": len(dev_words)}, sweep

    # the dev names plus distractor names, about as many words as the test lists they stand for (the
    # distractors are never spoken: they only add false-alarm chances, in dev and test sentences alike)
    small, small_sweep = choose(lists["dev_targets"] + lists["distractors"][:50], "100 words")
    large, large_sweep = choose(lists["dev_targets"] + lists["distractors"], f"{len(lists['distractors']) + 50} words")

    # --- test at the chosen (β, w) ---------------------------------------------------------------------------
    targets = lists["test_targets"]
    r1 = low_recall_words(rows["hwtest"], greedy["hwtest"])
    groups = [targets[i: i + 10] for i in range(0, len(targets), 10)]
    where = {h: gi for gi, grp in enumerate(groups) for h in grp}
    group_of = lambda k, r: where[r["hotword"]] if r["hotword"] else k % len(groups)  # noqa: E731
    table = {"no hotwords": hotword_score(rows["hwtest"], greedy["hwtest"], targets, greedy["hwtest"], r1)}
    beta, w = small["token_bonus"], small["weight"]
    table["10 hotwords"] = hotword_score(rows["hwtest"], run("hwtest", groups, w, beta, group_of), targets,
                                         greedy["hwtest"], r1)
    table["100 hotwords"] = hotword_score(rows["hwtest"], run("hwtest", targets, w, beta), targets, greedy["hwtest"], r1)
    big = targets + lists["distractors"]
    table["1000 hotwords"] = hotword_score(rows["hwtest"], run("hwtest", big, large["weight"], large["token_bonus"]),
                                           big, greedy["hwtest"], r1)
    for name, s in table.items():
        s.pop("per_word")
    result = {"command": "python " + " ".join(sys.argv), "model": str(a.model or "shipped default"),
              "lm": None if asr.lm is None else repr(asr.lm),
              "set": {s: len(rows[s]) for s in rows},
              "chosen": {"lists of 10 and 100": small, "list of 1000": large},
              "dev_sweep": {"lists of 10 and 100": small_sweep, "list of 1000": large_sweep},
              "test": table, "machine": platform.platform(), "torch": torch.__version__}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"\nchosen on dev: lists of 10 and 100: token_bonus {beta}, weight {w}; list of 1000: token_bonus "
          f"{large['token_bonus']}, weight {large['weight']}\n")
    print("| list | recall | precision | F1 | R1 recall (n) | FA /100 plain | induced FA /100 | CER | CER in spans | CER outside |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, s in table.items():
        print(f"| {name} | {s['recall']:.3f} | {s['precision']:.3f} | {s['f1']:.3f} | {s['r1']['recall']:.3f} "
              f"({s['r1']['words']}) | {s['false_alarms_per_100']} | {s['induced_false_alarms_per_100']} | "
              f"{s['cer']:.4f} | {s['cer_in_spans']:.4f} | {s['cer_outside_spans']:.4f} |")
    print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
