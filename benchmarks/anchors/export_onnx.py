"""FunASR's own ONNX export of a checkpoint directory (run by setup.sh with the anchors venv's python):

    benchmarks/anchors/.venv/bin/python benchmarks/anchors/export_onnx.py CKPT_DIR

= `funasr-export ++model=CKPT_DIR ++type=onnx ++quantize=true`: AutoModel(model=DIR).export(type="onnx",
quantize=True) writes DIR/model.onnx (fp32, opset 14) and DIR/model_quant.onnx (onnxruntime's quantize_dynamic:
MatMul weights uint8 per channel, the output layer and the bias encoder excluded), which funasr_onnx.Paraformer
loads with quantize=False / True.

One adjustment, which changes nothing in the graph FunASR meant to write: FunASR 1.4.16 calls
torch.onnx.export(..., opset_version=14, dynamic_axes=...) without `dynamo=`, written for the TorchScript
exporter; torch >= 2.9 made the torch.export-based exporter the default (it needs opset >= 18, onnxscript, and
`dynamic_shapes` instead of `dynamic_axes`). We pass dynamo=False, the exporter FunASR's call was written for.
"""
from __future__ import annotations

import functools
import sys
import time
from pathlib import Path


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    model_dir = Path(sys.argv[1]).resolve()
    import torch
    import torch.onnx

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    torch.onnx.export = functools.partial(torch.onnx.export, dynamo=False)

    from funasr import AutoModel

    t = time.perf_counter()
    model = AutoModel(model=str(model_dir), device="cpu", ncpu=torch.get_num_threads(), disable_update=True, disable_pbar=True, log_level="ERROR")
    out = model.export(type="onnx", quantize=True, device="cpu")
    print(f"[export_onnx] FunASR export → {out} in {time.perf_counter() - t:.0f} s")
    for name in ("model.onnx", "model_quant.onnx"):
        p = Path(out) / name
        if not p.is_file():
            print(f"[export_onnx] missing {p}", file=sys.stderr)
            return 1
        if p.parent != model_dir:
            (model_dir / name).write_bytes(p.read_bytes())
        print(f"[export_onnx] {name}: {p.stat().st_size / 2**20:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
