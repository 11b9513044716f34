"""Transcribing an archive with Ray Data: files → `map_batches` over recognizer actors (the model loaded once per
actor, the engine batching inside) → JSON lines with FunASR's keys, written as results arrive.

    from paraformer_ext.ray_data import transcribe_dataset
    transcribe_dataset(paths, "model_dir", "out.jsonl", actors=4, cpus_per_actor=2)

Ray schedules the actors over a cluster (or one machine); nothing here is a scheduler of ours. A file that cannot
be read gets a line with "error" instead of "text" (never lost); a re-run skips every source that already has a
line, so an interrupted run continues where it stopped. `pip install 'paraformer_ext[ray]'`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


class RecognizerActor:
    """One recognizer per actor, built once; each call transcribes a batch of rows {"key", "source"}."""

    def __init__(self, model_dir, load_options: dict, transcribe_options: dict, threads: int | None):
        import torch

        from .recognizer import load

        if threads:
            torch.set_num_threads(threads)
        self.asr = load(model_dir, **load_options)
        self.options = transcribe_options

    def __call__(self, batch: dict) -> dict:
        keys, sources = list(batch["key"]), [str(s) for s in batch["source"]]
        results = self.asr.transcribe(sources, keys=keys, **self.options)
        # one JSON string per row: Ray's columnar batches need one type per column, a result's keys vary
        return {"source": sources, "result": [json.dumps(r, ensure_ascii=False) for r in results]}


def _done_sources(output: Path) -> set[str]:
    done = set()
    if output.is_file():
        with open(output, encoding="utf-8") as f:
            for line in f:
                try:
                    done.add(json.loads(line)["source"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a crash mid-write: its source is redone
    return done


def transcribe_dataset(inputs, model_dir=None, output="transcripts.jsonl", *, actors: int = 1,
                       cpus_per_actor: float = 1, gpus_per_actor: float = 0, batch_size: int = 16,
                       load_options: dict | None = None, timestamps: bool = False, progress: bool = True,
                       **transcribe_options) -> dict:
    """Transcribe audio files with Ray Data; returns {"written", "skipped_done", "errors", "output"}.

    inputs: file paths, or a ray.data.Dataset with a "source" column (and optionally "key"; default: the file
    name without extension, FunASR's key). model_dir: a FunASR directory (None: the shipped model). output: a
    JSON-lines file, one {"key", "source", "text", "timestamp"?, "token_ids", ...} or {"key", "source", "error"}
    per input, appended as batches finish. actors × cpus_per_actor (or gpus_per_actor) is the parallelism; each
    actor uses torch with cpus_per_actor threads. load_options go to `paraformer_ext.load` (device, dtype,
    quantize, ...), the rest to `Recognizer.transcribe`.
    """
    import ray

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    done = _done_sources(output)
    if isinstance(inputs, ray.data.Dataset):
        ds = inputs
        if "key" not in ds.columns():
            ds = ds.add_column("key", lambda df: df["source"].map(lambda s: Path(str(s)).stem))
        if done:
            ds = ds.filter(lambda row: str(row["source"]) not in done)
        total = None
    else:
        rows = [{"key": Path(str(p)).stem, "source": str(p)} for p in inputs if str(p) not in done]
        total = len(rows)
        if not rows:
            return {"written": 0, "skipped_done": len(done), "errors": 0, "output": str(output)}
        ds = ray.data.from_items(rows)
    load_options = dict(load_options or {})
    opts = {"timestamps": timestamps, "progress": False, **transcribe_options}
    out = ds.map_batches(RecognizerActor, fn_constructor_args=(str(model_dir) if model_dir else None, load_options,
                                                               opts, max(1, int(cpus_per_actor))),
                         batch_size=batch_size, concurrency=actors, num_cpus=cpus_per_actor,
                         num_gpus=gpus_per_actor or None, batch_format="numpy")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="file", desc="transcribing (ray)", dynamic_ncols=True)
    written = errors = 0
    if output.is_file() and output.stat().st_size:
        with open(output, "rb") as f:
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"
        if cut:  # a line a crash left half-written stays alone on its line, so the next one is whole
            with open(output, "a", encoding="utf-8") as f:
                f.write("\n")
    with open(output, "a", encoding="utf-8") as f:
        for batch in out.iter_batches(batch_format="numpy", batch_size=None):
            for source, res in zip(batch["source"], batch["result"]):
                r = json.loads(res)
                line = {"key": r.pop("key"), "source": str(source), **r}
                errors += "error" in line
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
                written += 1
            f.flush()
            os.fsync(f.fileno())  # a line on disk is a file that a re-run skips
            if bar is not None:
                bar.update(len(batch["source"]))
    if bar is not None:
        bar.close()
    return {"written": written, "skipped_done": len(done), "errors": errors, "output": str(output)}
