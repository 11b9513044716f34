"""Multi-process training under torchrun: the process group, sharding, and the loss weighting that makes N ranks
train exactly like one process whose batch is the union of theirs.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous variables; the trainer calls `setup()` and, when
the world has more than one rank, wraps its loss in DistributedDataParallel (gloo on CPU, NCCL on GPUs).

Why the weighting: FunASR's losses are sums divided by the batch's token count (length_normalized_loss), and
DDP averages gradients over ranks. Ranks with different token counts would then weigh their tokens
differently; scaling rank r's loss by world · w_r / Σw (w: the token count) makes DDP's average the gradient of
the union batch's loss.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


class RankLostError(RuntimeError):
    """Another rank died or stopped answering; the run cannot continue (restart it with --resume)."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def setup(device: str) -> World:
    """The World from torchrun's environment, with the default process group initialised when it has more than
    one rank (NCCL for cuda, gloo for cpu). Without torchrun: a world of one, nothing initialised."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend)
    return world


def device_for(world: World, device: str) -> str:
    """Each rank on its own GPU (cuda:LOCAL_RANK) when training on cuda."""
    return f"cuda:{world.local_rank}" if world.distributed and torch.device(device).type == "cuda" else device


def global_sum(world: World, value: float, device) -> float:
    if not world.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    collective(dist.all_reduce, t)
    return float(t.item())


def collective_error(e: BaseException) -> RankLostError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return RankLostError(f"lost contact with another training rank ({first}); it probably died or was killed. "
                         "Every rank stops; restart the same torchrun command with --resume to continue from the "
                         "last checkpoint")


def is_comm_error(e: BaseException) -> bool:
    """A failure of the process group itself (a peer gone), as opposed to an error in the computation."""
    if isinstance(e, dist.DistError):
        return True
    msg = str(e).lower()
    return any(k in msg for k in ("gloo", "nccl", "connection", "peer", "socket", "timed out"))


def collective(fn, *args, **kwargs):
    """A torch.distributed call whose failure (a peer gone) becomes a RankLostError that says what to do."""
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, dist.DistError) as e:
        raise collective_error(e) from e


def gather_objects(world: World, obj) -> list:
    """obj from every rank, in rank order (a list of one without torchrun)."""
    if not world.distributed:
        return [obj]
    out = [None] * world.size
    collective(dist.all_gather_object, out, obj)
    return out


def barrier(world: World) -> None:
    if world.distributed:
        collective(dist.barrier)


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


class LossModule(torch.nn.Module):
    """The training loss as a module, so DistributedDataParallel can wrap it: DDP hooks the gradients of the
    parameters used in forward(), and training.compute_loss drives the model's parts (encoder, predictor,
    decoder) directly rather than through Paraformer.forward."""

    def __init__(self, model: torch.nn.Module, compute_loss):
        super().__init__()
        self.model = model
        self._compute_loss = compute_loss

    def forward(self, *args, **kwargs):
        return self._compute_loss(self.model, *args, **kwargs)
