"""Fine-tuning a FunASR Paraformer directory: `train(TrainConfig(...))`, the engine of `paraformer-ext train`.

Checkpoints (output_dir/checkpoints/) hold everything a resumed run needs to continue as if never stopped:
model, optimizer, scheduler step, RNG states and the data position (epoch, next batch); the batch order of an
epoch is a function of (seed, epoch), so the position is enough to find the rest. The result is written in
FunASR's layout (model.pt, config.yaml, am.mvn, tokens.json), so `paraformer_ext.load(output_dir)` and FunASR
itself read it.
"""
from __future__ import annotations

import gc
import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml

from ..audio import AudioError, load_audio
from ..checkpoint import resolve_model_dir
from ..metrics import character_errors
from . import distributed
from .data import DataError, make_batches, read_list
from .loss import compute_loss
from .mwer import MwerConfig


@dataclass
class TrainConfig:
    train_data: str
    valid_data: str
    output_dir: str
    init: str | None = None  # a FunASR model directory to fine-tune; None: from scratch (config + tokens)
    config: str | None = None  # from scratch: a FunASR config.yaml (the architecture)
    tokens: str | None = None  # from scratch: tokens.json / tokens.txt
    epochs: int = 10
    max_batch_frames: int = 3000  # padded 60 ms LFR frames per batch (about 3 minutes of audio)
    lr: float = 2e-4
    warmup: int = 1000  # FunASR's warmuplr warmup_steps
    # > 0: continue an earlier run's warmuplr schedule after this many of its optimizer steps (a shipped model's
    # card states them); the optimizer's moments are new, so the lr ramps from 0 to the schedule's over --warmup
    schedule_offset: int = 0
    accum_grad: int = 1
    clip: float = 5.0  # gradient norm clipping (FunASR's grad_clip)
    save_every_min: float = 30.0
    keep_best: int = 5  # average the best K epochs (by validation loss) into model.pt
    seed: int = 0
    resume: bool = False
    strict: bool = False
    device: str = "cpu"
    kernels: bool | None = None
    progress: bool = True
    sampling_ratio: float | None = None  # the GLM sampler's λ; None: the model config's (0: a vanilla NAR decoder)
    mwer_weight: float = 0.0  # > 0: MWER with negative sampling (mwer.MwerConfig's defaults) at this weight
    cache_features: bool = True  # frontend features kept in memory as fp16 after first use (≈ 67 MB per hour)
    bf16: bool = False  # forward under bf16 autocast (weights, gradients and AdamW stay float32)


def check_bf16(device: torch.device) -> None:
    """bf16 autocast needs a GPU that computes in bf16 (compute capability 8.0+) or a CPU (torch emulates bf16
    where the CPU lacks AVX-512 BF16 / AMX: correct, and slower than float32 there)."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--bf16: {torch.cuda.get_device_name(device)} does not compute in bf16 (compute capability "
                         "8.0 or newer is needed); train in float32 (without --bf16)")


def warmup_lr(base_lr: float, warmup: int, step: int) -> float:
    """FunASR's WarmupLR at optimizer step `step` (1-based): lr · warmup^0.5 · min(step^-0.5, step · warmup^-1.5),
    a linear ramp to base_lr at `warmup`, then inverse square-root decay."""
    step = max(step, 1)
    return base_lr * warmup ** 0.5 * min(step ** -0.5, step * warmup ** -1.5)


def scheduled_lr(base_lr: float, warmup: int, step: int, offset: int = 0) -> float:
    """The lr of optimizer step `step` (1-based) of this run: warmup_lr, or with offset > 0 the earlier run's
    schedule at offset + step, ramped linearly over the first `warmup` steps (fresh Adam moments)."""
    if offset == 0:
        return warmup_lr(base_lr, warmup, step)
    return warmup_lr(base_lr, warmup, offset + step) * min(1.0, step / warmup)


class Trainer:
    def __init__(self, cfg: TrainConfig, log=None):
        from ..recognizer import load

        if cfg.sampling_ratio is not None and not 0.0 <= cfg.sampling_ratio <= 1.0:
            raise ValueError(f"sampling_ratio must be in [0, 1] (0: no GLM sampler), got {cfg.sampling_ratio}")
        if cfg.mwer_weight < 0:
            raise ValueError(f"mwer_weight must be >= 0 (0: no MWER), got {cfg.mwer_weight}")
        if cfg.schedule_offset < 0:
            raise ValueError(f"schedule_offset must be >= 0 (optimizer steps of the earlier run), got {cfg.schedule_offset}")
        if cfg.accum_grad < 1 or cfg.epochs < 1 or cfg.max_batch_frames < 1 or cfg.warmup < 1 or cfg.keep_best < 1:
            raise ValueError("accum_grad, epochs, max_batch_frames, warmup and keep_best must all be >= 1, got "
                             f"{cfg.accum_grad}, {cfg.epochs}, {cfg.max_batch_frames}, {cfg.warmup}, {cfg.keep_best}")
        self.world = distributed.setup(cfg.device)
        if cfg.init is None:
            cfg = self._from_scratch(cfg, log, self.world)
        elif cfg.config or cfg.tokens:
            raise ValueError("--config and --tokens build a model from scratch; with --init the architecture and "
                             "tokens are the init directory's: give one or the other")
        if Path(cfg.output_dir).resolve() == Path(cfg.init).resolve():
            raise ValueError(f"--output-dir {cfg.output_dir} is the --init directory: the result would overwrite the "
                             "model it starts from; choose another output directory")
        self.cfg = cfg
        quiet = lambda s: None  # noqa: E731  (ranks other than 0 do not log)
        self.log = (log or (lambda s: print(s, file=sys.stderr, flush=True))) if self.world.main else quiet
        self.out = Path(cfg.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        # rank 0 keeps the seed, so a one-process run is the same with or without torchrun; every other rank
        # gets its own dropout, SpecAug, GLM and MWER streams
        seed = cfg.seed + 7919 * self.world.rank
        torch.manual_seed(seed)
        self.files = resolve_model_dir(cfg.init)
        device = distributed.device_for(self.world, cfg.device)
        # lm=None: validation CER measures the model being trained, even when --init has a language model
        rec = load(cfg.init, device=device, kernels=cfg.kernels, lm=None)
        self.pipeline = rec.pipeline
        self.model = rec.model.requires_grad_(True)
        if getattr(self.model, "filled_training_embed", None):
            warnings.warn(self.model.filled_training_embed, stacklevel=2)
        self.device = torch.device(device)
        if cfg.bf16:
            check_bf16(self.device)
        sr = self.pipeline.sample_rate
        self.train_utts, rep = read_list(cfg.train_data, self.pipeline.tokens, sr, cfg.strict)
        self.log(rep.summary(f"train {cfg.train_data}", len(self.train_utts)))
        self.valid_utts, rep = read_list(cfg.valid_data, self.pipeline.tokens, sr, cfg.strict)
        self.log(rep.summary(f"valid {cfg.valid_data}", len(self.valid_utts)))
        if not self.train_utts:
            raise DataError(f"{cfg.train_data}: no usable utterance (see the lines reported above)")
        self.train_frames = [self.pipeline.feature_frames(u.samples) for u in self.train_utts]
        self.valid_frames = [self.pipeline.feature_frames(u.samples) for u in self.valid_utts]
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=cfg.lr)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.loss_fn = self._plain_loss
        if self.world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            # find_unused_parameters: decoder.embed takes no gradient when the GLM sampler picks no position
            self.loss_fn = DistributedDataParallel(
                distributed.LossModule(self.model, compute_loss), find_unused_parameters=True,
                device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.step = 0  # optimizer steps taken
        self.epoch, self.batch = 0, 0  # the data position: the next batch to train on
        self.history: list[dict] = []  # per epoch: epoch, step, valid_loss, valid_cer, file
        self.skipped = 0  # batches lost to audio that could not be read
        self.hooks: list = []  # called as hook(trainer) after every optimizer step (tests, custom logging)
        # path -> (T, D) fp16 features. Cached values are what every epoch trains on, the first included, so a
        # run does not depend on whether a batch was cached (fp16 keeps ~3 significant digits of CMVN'd
        # features, far below SpecAug's and dropout's noise)
        self._feat_cache: dict[str, torch.Tensor] = {}
        self.mwer = MwerConfig(weight=cfg.mwer_weight) if cfg.mwer_weight > 0 else None
        self._set_lr()

    @staticmethod
    def _from_scratch(cfg: TrainConfig, log, world: distributed.World = distributed.World()) -> TrainConfig:
        """cfg with init = OUTPUT_DIR/scratch_init, built from --config and --tokens on the first run (kept for
        --resume: its CMVN was measured once)."""
        from dataclasses import replace

        from ..text import TokenList
        from .scratch import build_initial_dir

        if not (cfg.config and cfg.tokens):
            raise ValueError("give --init FUNASR_DIR to fine-tune, or --config CONFIG.yaml and --tokens TOKENS to "
                             "train from scratch")
        init = Path(cfg.output_dir) / "scratch_init"
        if world.main and not (init / "model.pt").is_file():
            conf = yaml.safe_load(Path(cfg.config).read_text(encoding="utf-8")) or {}
            fs = int((conf.get("frontend_conf") or {}).get("fs", 16000))  # lengths at the model's own rate
            utts, _ = read_list(cfg.train_data, TokenList.load(cfg.tokens), fs, cfg.strict)
            build_initial_dir(cfg.config, cfg.tokens, utts, init, cfg.seed)
            (log or (lambda m: print(m, file=sys.stderr, flush=True)))(f"built {init} from {cfg.config} and {cfg.tokens} (random weights, CMVN of the training audio)")
        distributed.barrier(world)  # the other ranks start from the directory rank 0 built
        return replace(cfg, init=str(init))

    # --- state -----------------------------------------------------------------------------------------

    def _set_lr(self) -> float:
        lr = scheduled_lr(self.cfg.lr, self.cfg.warmup, self.step + 1, self.cfg.schedule_offset)
        for g in self.opt.param_groups:
            g["lr"] = lr
        return lr

    def _rng_state(self) -> dict:
        rng = {"torch": torch.get_rng_state(), "generator": self.generator.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def state(self, rng_ranks: list[dict] | None = None) -> dict:
        """Everything a resumed run needs; rng_ranks: every rank's random state (default: this rank's)."""
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": {"name": "warmuplr", "step": self.step, "warmup": self.cfg.warmup, "lr": self.cfg.lr,
                              "offset": self.cfg.schedule_offset},
                "rng": {"ranks": rng_ranks or [self._rng_state()]}, "world_size": self.world.size,
                "position": {"epoch": self.epoch, "batch": self.batch}, "history": self.history,
                "config": asdict(self.cfg)}

    def save(self, name: str = "last.pt", gather: bool = True) -> Path:
        """Write a full checkpoint atomically (a crash mid-write leaves the previous one intact). Under torchrun
        every rank must call it (its random state is gathered); rank 0 writes. gather=False: this rank's state
        only (an interrupt, when the other ranks may be gone)."""
        rngs = distributed.gather_objects(self.world, self._rng_state()) if gather else None
        path = self.ckpt_dir / name
        if self.world.main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(self.state(rngs), tmp)
            os.replace(tmp, path)
        return path

    def resume(self) -> None:
        path = self.ckpt_dir / "last.pt"
        if not path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint {path}; start without --resume, or pass the "
                                    "--output-dir of the run to continue")
        st = torch.load(path, map_location="cpu", weights_only=False)
        written_by = st.get("world_size", 1)
        if written_by != self.world.size:
            raise ValueError(f"--resume: {path} was written by {written_by} training process(es), this run has "
                             f"{self.world.size}; the data position is per shard, so resume with the same number "
                             f"(torchrun --nproc_per_node / --nnodes)")
        offset = st["scheduler"].get("offset", 0)
        if offset != self.cfg.schedule_offset:  # the lr would jump: the run's step count means another schedule
            raise ValueError(f"--resume: {path} continues a schedule from step {offset} (--schedule-offset "
                             f"{offset}), this run says {self.cfg.schedule_offset}; resume with --schedule-offset {offset}")
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        self.step = st["scheduler"]["step"]
        ranks = st["rng"]["ranks"] if "ranks" in st["rng"] else [st["rng"]]  # older checkpoints: one rank
        rng = ranks[self.world.rank] if self.world.rank < len(ranks) else None
        if rng is None:  # written by an interrupt, which only rank 0 could save
            self.log("note: this checkpoint holds rank 0's random state only; the other ranks re-seed")
        else:
            torch.set_rng_state(rng["torch"])
            self.generator.set_state(rng["generator"])
            if "cuda" in rng and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.epoch, self.batch = st["position"]["epoch"], st["position"]["batch"]
        self.history = st["history"]
        self._set_lr()
        self.log(f"resumed from {path}: step {self.step}, epoch {self.epoch + 1}, batch {self.batch}")

    # --- data ------------------------------------------------------------------------------------------

    def _compute_features(self, utts) -> list[torch.Tensor]:
        waves = [load_audio(u.path, target_sr=self.pipeline.sample_rate) for u in utts]
        lens = torch.tensor([w.numel() for w in waves])
        wave = torch.zeros(len(waves), int(lens.max()))
        for i, w in enumerate(waves):
            wave[i, : w.numel()] = w
        with torch.no_grad():
            feats, flens = self.pipeline.features(wave.to(self.device), lens.to(self.device))
        return [feats[i, : int(flens[i])] for i in range(len(utts))]

    def features(self, utts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Audio → frontend features (B, T, D) and lengths, token ids padded with -1 and lengths."""
        if self.cfg.cache_features:
            todo = [u for u in utts if u.path not in self._feat_cache]
            if todo:
                for u, f in zip(todo, self._compute_features(todo)):
                    self._feat_cache[u.path] = f.to("cpu", torch.float16)
            per = [self._feat_cache[u.path].to(self.device, torch.float32) for u in utts]
        else:
            per = self._compute_features(utts)
        flens = torch.tensor([f.shape[0] for f in per], device=self.device)
        feats = torch.nn.utils.rnn.pad_sequence(per, batch_first=True)
        tl = torch.tensor([len(u.ids) for u in utts])
        text = torch.full((len(utts), int(tl.max())), -1, dtype=torch.int64)
        for i, u in enumerate(utts):
            text[i, : len(u.ids)] = torch.tensor(u.ids)
        return feats, flens, text.to(self.device), tl.to(self.device)

    @staticmethod
    def _where(utts, err) -> str:
        hit = [u.where for u in utts if u.path in str(err)]
        return ", ".join(hit or [u.where for u in utts])

    # --- loop ------------------------------------------------------------------------------------------

    def validate(self) -> tuple[float, float]:
        """(token-weighted validation loss, CER) in eval mode. The GLM sampler is off (sampling_ratio 0), so the
        loss is deterministic and comparable between epochs (FunASR validates with its random draw on)."""
        if not self.valid_utts:
            return float("nan"), float("nan")
        self.model.eval()
        tot, weight, errors, chars = 0.0, 0.0, 0, 0
        with torch.no_grad():
            for idx in make_batches(self.valid_frames, self.cfg.max_batch_frames, 0, 0):
                utts = [self.valid_utts[i] for i in idx]
                try:
                    feats, flens, text, tl = self.features(utts)
                except AudioError as e:
                    if self.cfg.strict:
                        raise
                    self.log(f"validation: skipped a batch of {len(utts)}: {e} (listed at {self._where(utts, e)})")
                    continue
                out = compute_loss(self.model, feats, flens, text, tl, sampling_ratio=0.0)
                tot += float(out["loss"]) * out["weight"]
                weight += out["weight"]
                for u, text in zip(utts, self._hypotheses(utts, feats, flens)):
                    errors += character_errors(u.text, text)
                    chars += len("".join(u.text.split()))
        self.model.train()
        if not weight:
            return float("nan"), float("nan")
        return tot / weight, errors / max(chars, 1)

    def _hypotheses(self, utts, feats, flens) -> list[str]:
        """Validation texts: greedy decoding of the features, or for a streaming model (which has no offline
        decoding) its own chunk-by-chunk recognition of the audio, with asr.stream()'s defaults."""
        if not self.model.cfg.streaming:
            return [r["text"] for r in self.pipeline.decode(feats, flens)]
        from ..stream import StreamingEngine, chunk_config

        engine = StreamingEngine(self.pipeline)
        out = []
        for u in utts:
            s = engine.stream(chunk_config())
            s.accept(load_audio(u.path, target_sr=self.pipeline.sample_rate), self.pipeline.sample_rate)
            out.append(s.finish()["text"])
        return out

    def _bar(self, total: int, initial: int):
        if not self.cfg.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, unit="batch", dynamic_ncols=True, leave=False,
                    desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}")

    def run(self) -> Path | None:
        """Train to the last epoch (or until Ctrl-C or SIGTERM, which save last.pt and raise KeyboardInterrupt),
        then write the output (rank 0 under torchrun; the other ranks return None)."""
        import signal
        import threading

        def stop(signum, frame):  # SIGTERM (a job scheduler, a closing session): stop like Ctrl-C, checkpoint saved
            raise KeyboardInterrupt(f"signal {signum}")

        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, stop) if main_thread else None
        finished = False
        try:
            self._loop()
            finished = True
        except KeyboardInterrupt:
            self.opt.zero_grad(set_to_none=True)  # a partial accumulation is dropped; its batches are redone
            if self.world.distributed:
                # the other ranks are being interrupted too: no collective can be trusted now
                self.log(f"interrupted at step {self.step}; continue from the last checkpoint with --resume")
            else:
                path = self.save(gather=False)
                self.log(f"interrupted: saved {path} (step {self.step}); continue with --resume")
            raise
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
            if self.world.distributed:
                # the DDP reducer holds gloo work on the group: free it, and let every rank arrive, before the
                # group is destroyed, or a rank can abort at exit (std::terminate on a still-joinable thread)
                if finished:
                    distributed.barrier(self.world)
                self.loss_fn = self._plain_loss
                gc.collect()
            distributed.shutdown(self.world)
        return self.export() if self.world.main else None

    def _plain_loss(self, *args, **kwargs):
        return compute_loss(self.model, *args, **kwargs)

    def _shard(self, batches: list[list[int]]) -> list[list[int]]:
        """This rank's batches: every world.size-th, the same count on every rank (the rest of the epoch's
        batches is left out, as a sampler with drop_last does), so that all ranks step together."""
        if not self.world.distributed:
            return batches
        per = len(batches) // self.world.size
        if per == 0:
            raise DataError(f"{len(batches)} batches per epoch cannot feed {self.world.size} training processes: "
                            "lower --max-batch-frames or use fewer processes")
        return batches[self.world.rank::self.world.size][:per]

    def _all_agree(self, flag: bool) -> bool:
        """True when `flag` is true on any rank (one value for all ranks' decisions)."""
        if not self.world.distributed:
            return flag
        return distributed.global_sum(self.world, float(flag), self.device) > 0

    def _loop(self) -> None:
        cfg = self.cfg
        self.model.train()
        last_save = time.monotonic()
        while self.epoch < cfg.epochs:
            batches = self._shard(make_batches(self.train_frames, cfg.max_batch_frames, cfg.seed, self.epoch))
            bar = self._bar(len(batches), self.batch) if self.world.main else None
            pending, t0, frames, last_loss = 0, time.perf_counter(), 0, float("nan")
            for bi in range(self.batch, len(batches)):
                utts = [self.train_utts[i] for i in batches[bi]]
                error = None
                try:
                    feats, flens, text, tl = self.features(utts)
                except AudioError as e:  # the header read, the samples do not: name it, lose one batch, not the run
                    if cfg.strict:
                        raise
                    error = e
                    print(f"skipped a batch of {len(utts)}: {e} (listed at {self._where(utts, e)})", file=sys.stderr,
                          flush=True)
                if self._all_agree(error is not None):  # every rank skips it, or the collectives would hang
                    self.skipped += 1
                    if bar is not None:
                        bar.update(1)
                    continue
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                    out = self.loss_fn(feats, flens, text, tl, sampling_ratio=cfg.sampling_ratio, mwer=self.mwer,
                                       generator=self.generator)
                scale = 1.0
                if self.world.distributed:  # DDP averages: weigh by token share so the union batch is trained
                    scale = self.world.size * out["weight"] / distributed.global_sum(self.world, out["weight"], self.device)
                try:
                    (out["loss"] * (scale / cfg.accum_grad)).backward()  # under DDP: the gradient all-reduce
                except RuntimeError as e:
                    if self.world.distributed and distributed.is_comm_error(e):
                        raise distributed.collective_error(e) from e
                    raise
                pending += 1
                last_loss = float(out["loss"].detach())
                frames += int(flens.sum())
                if pending == cfg.accum_grad or bi == len(batches) - 1:
                    norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
                    if torch.isfinite(norm):  # FunASR skips a step whose gradient overflowed
                        self.opt.step()
                    else:
                        self.log(f"step {self.step + 1}: gradient norm {float(norm)}, step skipped")
                    self.opt.zero_grad(set_to_none=True)
                    self.step += 1
                    lr = self._set_lr()
                    pending = 0
                    self.batch = bi + 1  # the position only moves at step boundaries: resume redoes no half step
                    if bar is not None:
                        dt = time.perf_counter() - t0
                        # frames are 60 ms LFR frames: audio seconds trained per wall second (this rank)
                        bar.set_postfix(loss=f"{last_loss:.3f}", acc=f"{out['acc']:.2f}", lr=f"{lr:.2e}",
                                        speed=f"{frames * 0.06 / max(dt, 1e-9):.0f}x")
                    for hook in self.hooks:
                        hook(self, out)
                    # rank 0's clock decides for everyone: save() is a collective
                    if self._all_agree(self.world.main and time.monotonic() - last_save >= cfg.save_every_min * 60):
                        self.save()
                        last_save = time.monotonic()
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.close()
            if pending:  # only when the epoch's last batch was skipped: its partial accumulation is dropped
                self.opt.zero_grad(set_to_none=True)
            vloss, vcer = self.validate() if self.world.main else (float("nan"), float("nan"))
            self.epoch, self.batch = self.epoch + 1, 0
            name = f"epoch{self.epoch}.pt"
            self.history.append({"epoch": self.epoch, "step": self.step, "valid_loss": vloss, "valid_cer": vcer, "file": name})
            self.log(f"epoch {self.epoch}: step {self.step}, train loss {last_loss:.4f}, "
                     f"valid loss {vloss:.4f}, valid CER {vcer:.2%}")
            if self.world.main:
                self.ckpt_dir.mkdir(parents=True, exist_ok=True)
                torch.save(self.model.state_dict(), self.ckpt_dir / name)
                self._prune()
            self.save()
            last_save = time.monotonic()

    def _best(self) -> list[dict]:
        """The best keep_best epochs by validation loss (the latest ones when there is no validation)."""
        h = [e for e in self.history if (self.ckpt_dir / e["file"]).is_file()]
        key = lambda e: (math.inf if math.isnan(e["valid_loss"]) else e["valid_loss"], -e["epoch"])  # noqa: E731
        return sorted(h, key=key)[: self.cfg.keep_best]

    def _prune(self) -> None:
        keep = {e["file"] for e in self._best()}
        for e in self.history:
            if e["file"] not in keep:
                (self.ckpt_dir / e["file"]).unlink(missing_ok=True)

    def export(self) -> Path:
        """model.pt = the average of the best epochs' weights, beside the init's config.yaml, am.mvn, tokens.json."""
        best = self._best()
        sds = [torch.load(self.ckpt_dir / e["file"], map_location="cpu", weights_only=True) for e in best]
        avg = {}
        for k, v in sds[0].items():
            # an integer buffer (a step counter) is taken from the best checkpoint, not averaged (ESPnet-style
            # averaging sums such counters instead); Paraformer's state dict has none today
            avg[k] = (sum(sd[k].double() for sd in sds) / len(sds)).to(v.dtype) if v.is_floating_point() else v
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save(avg, self.out / "model.pt")
        shutil.copyfile(self.files.config_path, self.out / "config.yaml")
        self._record_overrides(self.out / "config.yaml")
        shutil.copyfile(self.files.cmvn, self.out / "am.mvn")
        with open(self.out / "tokens.json", "w", encoding="utf-8") as f:
            json.dump(list(self.pipeline.tokens), f, ensure_ascii=False, indent=0)
        with open(self.out / "training.yaml", "w") as f:
            # schedule_steps: where the lr schedule stood at the newest averaged epoch (an earlier run's steps
            # included; not the run's current step, which may lie past it): --schedule-offset of a run that
            # continues from this directory
            yaml.safe_dump({"averaged": [e["file"] for e in best], "history": self.history, "config": asdict(self.cfg),
                            "schedule_steps": self.cfg.schedule_offset + max(e["step"] for e in best)},
                           f, sort_keys=False, allow_unicode=True)
        self.log(f"wrote {self.out}/model.pt: the average of {', '.join(e['file'] for e in best)}")
        return self.out

    def _record_overrides(self, path: Path) -> None:
        """A --sampling-ratio that differs from config.yaml's goes into the exported config.yaml, so training
        continued from this directory (--init) keeps the λ it was trained with instead of the recipe's."""
        if self.cfg.sampling_ratio is None:
            return
        conf = yaml.safe_load(path.read_text(encoding="utf-8"))
        if (conf.get("model_conf") or {}).get("sampling_ratio") == self.cfg.sampling_ratio:
            return
        conf.setdefault("model_conf", {})["sampling_ratio"] = self.cfg.sampling_ratio
        path.write_text(f"# written by paraformer-ext train: model_conf.sampling_ratio = --sampling-ratio "
                        f"{self.cfg.sampling_ratio:g}\n" + yaml.safe_dump(conf, sort_keys=False, allow_unicode=True),
                        encoding="utf-8")


def train(cfg: TrainConfig, log=None) -> Path:
    t = Trainer(cfg, log)
    if cfg.resume:
        t.resume()
    return t.run()
