"""Half-precision accuracy against FunASR's float32 goldens (issues 4 and 5): per preset, wav and dtype, the
encoder output's relative error, whether the fire frames are unchanged, and how many token ids agree with
FunASR's, overall and at positions where FunASR's top-1/top-2 log-prob gap exceeds 0.05.

    python benchmarks/precision.py --device cpu --json benchmarks/results/precision_cpu.json

`compare(asr, preset, wav)` is also what tests/test_parity.py asserts on.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, shared_dir  # noqa: E402

WAVS = ["asr_example", "long"]
MARGIN = 0.05


def golden(shared: Path, preset: str, wav: str):
    base = shared / "golden" / f"{preset}_{wav}"
    return np.load(f"{base}.npz"), json.loads(open(f"{base}.json", encoding="utf-8").read())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@torch.no_grad()
def compare(asr, shared: Path, preset: str, wav: str) -> dict:
    """Golden features through `asr`'s model (whatever its dtype / quantization); the numbers above."""
    g, j = golden(shared, preset, wav)
    feats = torch.from_numpy(g["features"])[None].to(asr.device)
    t0 = time.perf_counter()
    out = asr.model.greedy(feats, torch.tensor([feats.shape[1]], device=asr.device))
    wall = time.perf_counter() - t0
    enc = out.encoder_out[0].double().cpu()
    if "encoder_out" in g.files:  # small: the whole tensor
        enc_err = {"encoder_rel_err": _rel(enc, torch.from_numpy(g["encoder_out"]).double())}
    else:  # large: what the golden keeps of it
        enc_err = {
            "encoder_frame_l2_rel_err": _rel(enc.norm(dim=-1), torch.from_numpy(g["encoder_out_frame_l2"]).double()),
            "encoder_rows_rel_err": _rel(torch.cat([enc[:4], enc[-4:]]),
                                         torch.from_numpy(np.concatenate([g["encoder_out_first4"], g["encoder_out_last4"]])).double()),
        }
    fires = out.fires[0].float().cpu().numpy()
    fire_frames = [int(t) for t in np.nonzero(fires >= 1.0)[0]]
    ids = out.token_ids[0].tolist()[: int(out.token_num[0])]
    want = j["argmax_ids"]
    top2 = g["logp_top2_values"]
    margin = top2[:, 0] - top2[:, 1]
    res = {"preset": preset, "wav": wav, "dtype": str(asr.model.dtype).replace("torch.", ""), "wall_s": round(wall, 3),
           **enc_err, "fire_frames_equal": fire_frames == j["fire_frames"], "positions": len(want),
           "positions_margin_gt_0.05": int((margin > MARGIN).sum())}
    if len(ids) == len(want):
        agree = [a == b for a, b in zip(ids, want)]
        res["agree"] = sum(agree)
        res["agree_margin_gt_0.05"] = sum(a for a, m in zip(agree, margin) if m > MARGIN)
        res["mismatches"] = [{"pos": k, "golden_margin": round(float(margin[k]), 4), "ours": ids[k], "funasr": want[k]}
                             for k in range(len(want)) if not agree[k]]
    else:  # a fire moved: positions no longer line up
        res["agree"] = res["agree_margin_gt_0.05"] = None
        res["token_count"] = len(ids)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--presets", nargs="+", default=["small", "large"])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float16", "bfloat16"])
    ap.add_argument("--quantize", default=None, help="also run this quantization (int8)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    shared = shared_dir()
    if shared is None:
        sys.exit("precision.py needs ../shared (golden data); set PARAFORMER_EXT_SHARED")
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import golden_checkpoint  # builds the golden checkpoint once

    import paraformer_ext

    rows = []
    runs = [(d, None) for d in a.dtypes] + ([("float32", a.quantize)] if a.quantize else [])
    for preset in a.presets:
        for dtype, quant in runs:
            kw = {"quantize": quant} if quant else {}
            asr = paraformer_ext.load(golden_checkpoint(preset), device=a.device, dtype=dtype, **kw)
            for wav in WAVS:
                r = compare(asr, shared, preset, wav)
                r["quantize"] = quant
                rows.append(r)
                enc = r.get("encoder_rel_err", r.get("encoder_frame_l2_rel_err"))
                print(f"{preset:6} {wav:12} {r['dtype']:9} {quant or '':5} enc_rel={enc:.2e} fires_equal={r['fire_frames_equal']} "
                      f"agree={r['agree']}/{r['positions']} agree(margin>0.05)={r['agree_margin_gt_0.05']}/{r['positions_margin_gt_0.05']}",
                      flush=True)
            del asr
    if a.json:
        env = {"torch": torch.__version__, "device": a.device, "threads": a.threads, "python": platform.python_version(),
               "build_info": paraformer_ext.build_info(), "date": time.strftime("%Y-%m-%d"),
               "command": "python " + " ".join(sys.argv)}
        if a.device == "cuda":
            env["gpu"] = torch.cuda.get_device_name(0)
        Path(a.json).write_text(json.dumps({"env": env, "results": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
