"""Training across processes: the world adaptool runs in (set by torchrun, or by accelerate,
which launches with torchrun), started through accelerate, and the few collectives the loop
needs. One process is a world of one, and every helper here is then a no-op."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adaptool.errors import ModelError

if TYPE_CHECKING:
    from adaptool.recipe.schema import DistributedSection


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


def start(world: World, section: DistributedSection | None = None) -> Any:
    """Join the world through accelerate (it creates the process group: NCCL on GPUs, gloo
    on CPUs) with the recipe's strategy (``section``, default DDP), and return the
    Accelerator; None in a world of one (nothing to share, whatever the strategy)."""
    global _accelerator
    if not world.distributed:
        return None
    import torch

    from adaptool.recipe.schema import DistributedSection

    section = section or DistributedSection()
    gpu = torch.cuda.is_available()
    if section.strategy == "deepspeed":
        raise ModelError(
            'distributed.strategy = "deepspeed": adaptool trains with "ddp" and "fsdp"; '
            'DeepSpeed is not in this version. Use strategy = "fsdp" to shard the base and '
            "the adapter's optimizer state across the processes (ZeRO stage 3's layout), or "
            '"ddp".'
        )
    if section.strategy == "fsdp" and section.cpu_offload and not gpu:
        raise ModelError(
            "distributed.cpu_offload = true moves FSDP's shards from GPU to CPU memory "
            "between uses; on CPU processes they are in CPU memory already. Leave it out."
        )
    if _accelerator is None:
        from datetime import timedelta

        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        fsdp = None
        process_group: dict[str, Any] = {"timeout": timedelta(hours=WAIT_HOURS)}
        if section.strategy == "fsdp":
            from adaptool.sharding import plugin

            fsdp = plugin(section, gpu=gpu)
            if gpu and section.cpu_offload:  # offloaded shards meet in collectives on the CPU
                process_group["backend"] = "cuda:nccl,cpu:gloo"
        # adaptool's precision is its own (bf16 weights, not autocast), whatever an
        # `accelerate config` says; the others wait while the main process tokenizes,
        # evaluates or checkpoints, which may take longer than NCCL's default 10 minutes
        _accelerator = Accelerator(
            cpu=not gpu,
            mixed_precision="no",
            fsdp_plugin=fsdp if gpu else None,
            kwargs_handlers=[InitProcessGroupKwargs(**process_group)],
        )
        if fsdp is not None and not gpu:
            # accelerate hands its FSDP plugin to accelerators only (state.py), though
            # torch's FSDP2 shards CPU tensors over gloo just as well: the plugin goes to
            # the same FSDP2 preparation on CPU processes
            _accelerator.state.fsdp_plugin = fsdp
    return _accelerator


#: how long a process waits for the others at a collective before giving up
WAIT_HOURS = 6


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
