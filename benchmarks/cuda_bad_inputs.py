"""Every compiled op on the CUDA device, called with bad inputs straight through torch.ops: each must raise a
RuntimeError that names the problem, never crash. Each case runs in its own child process (forked before CUDA is
initialised), so a crash is reported with its signal and the remaining cases still run.

    python benchmarks/cuda_bad_inputs.py [--device cuda|cpu] [--json out.json]

Exit status 1 when any case crashed or did not raise. On a machine without CUDA it says so and exits 0 (the
CPU cases are the tests' job: tests/test_*::test_bad_inputs and friends).
The first run on an H200 (benchmarks/results/gpu_h200_2026-12-04) crashed on cif with a 2-D hidden.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys


def cases(c: str = "cuda"):
    """(name, thunk) pairs; the thunks build their tensors on device c when called (in the child)."""
    import torch

    ops = torch.ops.paraformer_ext
    f32 = dict(device=c, dtype=torch.float32)

    def t(*shape, **kw):
        return torch.randn(*shape, **{**f32, **kw})

    return [
        ("cif: hidden 2-D", lambda: ops.cif(t(5, 4), t(2, 5).abs(), None, 1.0, 0.0, 0)),
        ("cif: alphas int64", lambda: ops.cif(t(2, 5, 4), torch.ones(2, 5, dtype=torch.long, device=c), None, 1.0, 0.0, 0)),
    ] + ([("cif: alphas on the CPU", lambda: ops.cif(t(2, 5, 4), torch.rand(2, 5), None, 1.0, 0.0, 0))] if c != "cpu" else []) + [
        ("cif: alphas shape", lambda: ops.cif(t(2, 5, 4), t(2, 6).abs(), None, 1.0, 0.0, 0)),
        ("cif: lengths shape", lambda: ops.cif(t(2, 5, 4), t(2, 5).abs(), torch.ones(3, dtype=torch.long, device=c), 1.0, 0.0, 0)),
        ("cif: threshold 0", lambda: ops.cif(t(2, 5, 4), t(2, 5).abs(), None, 0.0, 0.0, 0)),
        ("cif_backward: grad D", lambda: ops.cif_backward(t(2, 3, 7), None, t(2, 5, 4), t(2, 5).abs(), None, 1.0, 0.0)),
        ("cif_stream: hidden 2-D", lambda: ops.cif_stream(t(5, 4), t(2, 5).abs(), torch.full((2,), 5, device=c),
                                                           t(2), t(2, 4), torch.zeros(2, dtype=torch.bool, device=c), 1.0, 0.45)),
        ("fsmn_memory: x 2-D", lambda: ops.fsmn_memory(t(5, 4), t(4, 11), None, 5, None, None)),
        ("fsmn_memory: weight D", lambda: ops.fsmn_memory(t(2, 5, 4), t(3, 11), None, 5, None, None)),
        ("fsmn_memory: left out of range", lambda: ops.fsmn_memory(t(2, 5, 4), t(4, 11), None, 50, None, None)),
        ("dropout_hash: p = 1.5", lambda: ops.dropout_hash(t(2, 5), 1.5, 0, None)),
        ("quantize_rows: 3-D float64", lambda: ops.quantize_rows(t(2, 3, 8, dtype=torch.float64))),
        ("int8_linear_epilogue: acc float", lambda: ops.int8_linear_epilogue(t(4, 8), t(4), t(8), None, None, False, torch.float32)),
        ("out_proj_argmax: weight D mismatch", lambda: ops.out_proj_argmax(t(4, 8), t(16, 9), None, None, 0)),
    ]


def run_case(thunk) -> tuple[str, str]:
    try:
        thunk()
        import torch

        if torch.cuda.is_initialized():
            torch.cuda.synchronize()
    except RuntimeError as e:
        return "raised", str(e).splitlines()[0][:200]
    except Exception as e:  # a different error type is still not a crash, but say which
        return "raised-other", f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return "no-error", ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: check the probe itself here")
    ap.add_argument("--only", default=None, help="run this one case in this process (no fork: for a debugger)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import torch

    import paraformer_ext

    if a.device == "cuda" and not (torch.cuda.is_available() and paraformer_ext.has_cuda_kernels()):
        print("no CUDA device or no CUDA kernels: nothing to probe")
        return
    if a.only is not None:
        thunk = dict(cases(a.device)).get(a.only)
        if thunk is None:
            sys.exit(f"no case named {a.only!r}; the cases: {[n for n, _ in cases(a.device)]}")
        print(run_case(thunk))
        return
    rows = []
    for name, thunk in cases(a.device):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: CUDA is initialised here, never in the parent
            os.close(r)
            res = run_case(thunk)
            os.write(w, json.dumps(res).encode())
            os._exit(0)
        os.close(w)
        data = os.read(r, 65536)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            outcome, msg = "CRASHED", f"signal {signal.Signals(os.WTERMSIG(status)).name}"
        else:
            outcome, msg = json.loads(data.decode()) if data else ("CRASHED", f"exit {os.WEXITSTATUS(status)}")
        rows.append({"case": name, "outcome": outcome, "message": msg})
        print(f"{outcome:12s} {name:36s} {msg}", flush=True)
    bad = [r for r in rows if r["outcome"] not in ("raised", "raised-other")]
    print(f"{len(rows) - len(bad)} of {len(rows)} bad inputs raised; {len(bad)} crashed or passed silently")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows}, f, indent=1)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
