"""``adaptool train --nproc N``: the same command in N processes per machine, started by
torchrun's own launcher (``torch.distributed.run``, what ``torchrun`` and ``accelerate launch``
run), not a launcher of adaptool's. Each process finds its place from the environment
torchrun sets (:func:`adaptool.distributed.current`)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence


def launch(
    argv: Sequence[str],
    *,
    nproc: int,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str | None = None,
    master_port: int | None = None,
) -> int:
    """Run ``python -m adaptool ARGV`` in ``nproc`` processes on this machine, one of
    ``nnodes`` machines (this one ``node_rank``, the first at ``master_addr:master_port``).
    Returns 0, or the exit code of the first process that failed: the others are stopped
    by torchrun, and a message every process hit is printed once (by the first)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = [f"--nproc-per-node={nproc}", f"--nnodes={nnodes}", f"--node-rank={node_rank}"]
    if nnodes == 1 and master_addr is None and master_port is None:
        args.append("--standalone")  # one machine: a free port, no address to give
    else:
        args += [f"--master-addr={master_addr or '127.0.0.1'}"]
        args += [f"--master-port={master_port or 29500}"]
    args += ["--max-restarts=0", "--module", "adaptool", *argv]
    for name in ("torch.distributed.run", "torch.distributed.elastic"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # its chatter; ours is enough
    try:
        run(parse_args(args))
    except ChildFailedError as exc:
        # a process's own exit (2: adaptool's error) before those torchrun then killed
        failures = sorted(exc.failures.values(), key=lambda f: (f.exitcode <= 0, f.timestamp))
        return next((f.exitcode for f in failures if f.exitcode > 0), 1)
    except (KeyboardInterrupt, SignalException):  # Ctrl-C: torchrun passed it on to every
        return 130  # process and waited for them: they agreed on a step and checkpointed it
    finally:
        sys.stdout.flush()
    return 0
