"""Training across processes: the world adaptool runs in (set by torchrun, or by accelerate,
which launches with torchrun), started through accelerate, and the few collectives the loop
needs. One process is a world of one, and every helper here is then a no-op."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from adaptool.errors import ModelError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that writes (the output dir, logs, trackers, checkpoints)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


#: where launchers put the world's size, this process's rank and its rank on the machine:
#: torchrun (and accelerate launch on GPUs), then MPI (accelerate launch on CPUs, mpirun)
ENVIRONMENT = {
    "size": ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"),
    "rank": ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK"),
    "local_rank": (
        "LOCAL_RANK",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "MV2_COMM_WORLD_LOCAL_RANK",
    ),
}


def _from_environment(key: str) -> int:
    for name in ENVIRONMENT[key]:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return 1 if key == "size" else 0


def current() -> World:
    """The world the launcher (torchrun, ``accelerate launch``, mpirun) set up, from its
    environment; a world of one when there is none."""
    size = _from_environment("size")
    if size <= 1:
        return World()
    return World(_from_environment("rank"), size, _from_environment("local_rank"))


_accelerator: Any = None


def start(world: World, strategy: str = "ddp") -> Any:
    """Join the world through accelerate (it creates the process group: NCCL on GPUs, gloo
    on CPUs) and return the Accelerator; None in a world of one (nothing to share, whatever
    the strategy)."""
    global _accelerator
    if not world.distributed:
        return None
    import torch

    gpu = torch.cuda.is_available()
    if strategy != "ddp":
        name = {"fsdp": "FSDP", "deepspeed": "DeepSpeed"}[strategy]
        if not gpu:
            raise ModelError(
                f'distributed.strategy = "{strategy}": accelerate {version("accelerate")} '
                f"runs {name} on GPUs only (it shards over NCCL; on CPU processes it falls "
                f"back to plain data parallelism), and this machine has none. Use strategy = "
                f'"ddp" on CPUs: each process holds the whole model, which is what LoRA on a '
                f"CPU needs."
            )
        raise ModelError(
            f'distributed.strategy = "{strategy}": adaptool trains with "ddp" so far; {name} '
            f'(sharding the base across GPUs) is not in this version. Use strategy = "ddp".'
        )
    if _accelerator is None:
        from datetime import timedelta

        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        # adaptool's precision is its own (bf16 weights, not autocast), whatever an
        # `accelerate config` says; the others wait while the main process tokenizes,
        # evaluates or checkpoints, which may take longer than NCCL's default 10 minutes
        _accelerator = Accelerator(
            cpu=not gpu,
            mixed_precision="no",
            kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(hours=WAIT_HOURS))],
        )
    return _accelerator


#: how long a process waits for the others at a collective before giving up
WAIT_HOURS = 6


def version(distribution: str) -> str:
    from importlib.metadata import version as installed

    return installed(distribution)


def _ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _ready():
        import torch.distributed as dist

        dist.barrier()


def all_sum(values: Sequence[float]) -> list[float]:
    """Each value summed over the world (float64)."""
    if not _ready():
        return [float(v) for v in values]
    import torch
    import torch.distributed as dist

    # NCCL reduces GPU tensors only; gloo CPU ones
    on = torch.cuda.current_device() if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(list(values), dtype=torch.float64, device=on)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def any_true(flag: bool) -> bool:
    """True on every process when it is true on one (a Ctrl-C seen by one process)."""
    return all_sum([1.0 if flag else 0.0])[0] > 0


def from_main(value: Any) -> Any:
    """The main process's ``value``, on every process (pickled: small objects only)."""
    if not _ready():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_main(value: Any) -> list[Any] | None:
    """Every process's ``value``, in rank order, on the main process (None on the others;
    ``[value]`` in a world of one)."""
    if not _ready():
        return [value]
    import torch.distributed as dist

    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, out, dst=0)
    return out


@contextmanager
def main_first(world: World) -> Iterator[None]:
    """The main process does the block first (tokenizing into the cache), the others after
    it (reading the cache)."""
    if not world.main:
        barrier()
    yield
    if world.main:
        barrier()
