"""Turn a pytest-benchmark JSON file into one table per group: median time, speed-up over the group's
baseline (the entry with extra_info.baseline = True) and, where recorded, achieved bandwidth vs the
device-to-device copy measured in the same run.

    python benchmarks/summarize.py results.json [--markdown]
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict


def load_rows(path):
    data = json.load(open(path))
    groups = defaultdict(list)
    for b in data["benchmarks"]:
        ex = b.get("extra_info", {})
        med = ex.get("cuda_median_ms")
        med = med / 1e3 if med is not None else b["stats"]["median"]
        name = b["name"].split("[")[-1].rstrip("]")
        groups[b.get("group") or b["name"].split("[")[0]].append((name, med, ex))
    return data.get("machine_info", {}), data.get("datetime"), groups


def table(groups, markdown: bool) -> str:
    lines = []
    if markdown:
        lines += ["| group | variant | median | vs baseline | GB/s | % of copy |", "|---|---|---|---|---|---|"]
    for g in sorted(groups):
        rows = groups[g]
        base = next((m for _, m, ex in rows if ex.get("baseline")), None)
        for name, med, ex in rows:
            speed = f"{base / med:.2f}x" if base else ""
            gbs = f"{ex['gbs']:.0f}" if "gbs" in ex else ""
            pct = f"{100 * ex['gbs'] / ex['copy_gbs']:.0f}%" if "gbs" in ex and ex.get("copy_gbs") else ""
            t = f"{med * 1e3:.3f} ms" if med < 1 else f"{med:.2f} s"
            if markdown:
                lines.append(f"| {g} | {name} | {t} | {speed} | {gbs} | {pct} |")
            else:
                lines.append(f"{g:<40} {name:<40} {t:>12} {speed:>8} {gbs:>6} {pct:>5}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("json")
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    machine, when, groups = load_rows(a.json)
    print(f"# {when}  {machine.get('cpu', {}).get('brand_raw', '')}")
    print(table(groups, a.markdown))


if __name__ == "__main__":
    main()
