"""Inside the processes of a data-parallel training run (torch.distributed): the process group, the model
wrapper, each rank's part of a batch, the mean of logged values, and the one rank that writes.

Every function here also holds in a plain one-process run (no process group: rank 0 of 1), where it leaves
things as they are, so the trainers call them unconditionally and their one-process path is unchanged.
The backend is gloo on the CPU (how the tests run it) and nccl on CUDA; a CPU model is wrapped without
`device_ids` (DistributedDataParallel rejects them there).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .launch import Place


@contextlib.contextmanager
def process_group(place: Place, device: torch.device) -> Iterator[None]:
    """The default process group of this worker for the block (torchrun's variables set, as MMEngine reads
    LOCAL_RANK): nccl on its node's GPU LOCAL_RANK for a CUDA device, else gloo."""
    os.environ.update(place.environment())
    if device.type == "cuda":
        torch.cuda.set_device(place.local_rank % max(1, torch.cuda.device_count()))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://", rank=place.rank,
                            world_size=place.world)
    try:
        yield
    finally:
        # The runs' wrapped models (DDP reducers) hold the group and may sit in reference cycles: freed at
        # interpreter exit, gloo's threads abort the process ("terminate called without an active exception").
        gc.collect()
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, number of processes): (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes the run's files: rank 0."""
    return rank_and_world()[0] == 0


def data_parallel(model: torch.nn.Module, find_unused: bool = False) -> torch.nn.Module:
    """`model` wrapped in DistributedDataParallel over the process group (gradients averaged over the ranks,
    rank 0's weights broadcast at the start), or `model` itself in a one-process run."""
    if rank_and_world()[1] == 1:
        return model
    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=find_unused)


def rank_part(items: Sequence) -> list:
    """This rank's part of a batch every rank drew alike: items rank, rank + world, ... (all in one process)."""
    rank, world = rank_and_world()
    return list(items[rank::world])


class RankBatches:
    """A batch sampler's batches cut into this rank's part (`rank_part`): every rank draws the same batches
    from the same seed, so together the ranks train on the batches of one process."""

    def __init__(self, batches: Iterable[Sequence]):
        self.batches = batches

    def __iter__(self) -> Iterator[list]:
        return (rank_part(b) for b in self.batches)


def mean_over_ranks(values: Mapping[str, float]) -> dict[str, float]:
    """Each value averaged over the ranks (for the loss log: the whole batch's loss, not rank 0's half)."""
    if rank_and_world()[1] == 1:
        return dict(values)
    keys = list(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    t /= rank_and_world()[1]
    return dict(zip(keys, t.cpu().tolist()))


def replica_digests(model: torch.nn.Module) -> list[str]:
    """SHA-256 of every rank's parameters, by rank (one entry without a process group): data parallelism
    keeps them equal after every step."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    if rank_and_world()[1] == 1:
        return [h.hexdigest()]
    out: list[Any] = [None] * rank_and_world()[1]
    dist.all_gather_object(out, h.hexdigest())
    return out


def barrier() -> None:
    """Wait for every rank (nothing without a process group)."""
    if rank_and_world()[1] > 1:
        dist.barrier()
