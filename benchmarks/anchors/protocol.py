"""The anchors' worker protocol and the pieces both benchmarks share, without torch (the ONNX Runtime and
FunASR workers run in the anchors venv and import this too).

A worker is a persistent process holding one system. It prints `READY <json>` once set up, then answers one
JSON command per stdin line with `RESULT <json>` (or `ERROR <message>`), and exits on {"cmd": "finish"} after
its last `RESULT`. The parent drives every system's worker in turn (e2e.WorkerProc), so rounds interleave and
every system sees the same drift of a shared machine; each call is timed inside its worker.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
from rss import max_rss_mb, proc_status_mb, reset_peak_rss  # noqa: E402

DEFAULT_WORK = Path(os.environ.get("ANCHORS_WORK", HERE / "work"))
DEFAULT_MODEL = DEFAULT_WORK / "large"
ANCHORS_PYTHON = Path(os.environ.get("ANCHORS_VENV", HERE / ".venv")) / "bin" / "python"


def serve(ready: dict, handlers: dict) -> None:
    """The worker's side: READY, then commands until finish. A handler takes the command dict and returns a dict;
    "finish" adds the process's memory figures (peak_rss_mb: VmHWM since the last reset_peak_rss or start;
    ru_maxrss_mb: getrusage, which Linux carries over from the forking parent)."""
    print("READY " + json.dumps(ready), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "finish":
                out = handlers["finish"](cmd) if "finish" in handlers else {}
                out.update(memory())
                print("RESULT " + json.dumps(out), flush=True)
                return
            print("RESULT " + json.dumps(handlers[cmd["cmd"]](cmd)), flush=True)
        except Exception as e:  # noqa: BLE001  (reported to the parent, which records it per system)
            traceback.print_exc()
            print("ERROR " + json.dumps(f"{type(e).__name__}: {e}"), flush=True)


def memory() -> dict:
    return {"peak_rss_mb": proc_status_mb("VmHWM"), "rss_mb": proc_status_mb("VmRSS"), "ru_maxrss_mb": max_rss_mb()}


def timed(fn):
    """(result, wall s, process CPU s) of fn()."""
    c = os.times()
    t = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t
    c2 = os.times()
    return out, wall, (c2.user - c.user) + (c2.system - c.system)


def median(xs):
    return statistics.median(xs) if xs else None


def ask(w, cmd: dict, timeout: float) -> dict:
    """Send one command to an e2e.WorkerProc and return its RESULT (RuntimeError on ERROR, exit or timeout)."""
    try:
        return json.loads(w.ask(json.dumps(cmd), "RESULT", timeout, error_prefix="ERROR"))
    except RuntimeError as e:
        raise RuntimeError(f"{cmd['cmd']}: {e}") from None


def finish_all(workers: dict, rows: dict, timeout: float) -> None:
    """Ask every worker for its final figures (into rows[system]; a failure is recorded there) and stop it."""
    for s, w in workers.items():
        try:
            rows[s].update(ask(w, {"cmd": "finish"}, timeout))
        except RuntimeError as e:
            rows[s]["failed"] = f"finish: {e}"
        finally:
            w.kill()


def markdown_table(head: list[str], rows: list[list]) -> str:
    cell = lambda x: "-" if x is None else str(x)  # noqa: E731
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows])


def fmt(x, spec: str) -> str | None:
    return None if x is None else format(x, spec)
