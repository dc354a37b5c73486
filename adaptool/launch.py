"""``adaptool train --nproc N``: the same command in N processes per machine, started by
torchrun's own launcher (``torch.distributed.run``, what ``torchrun`` and ``accelerate launch``
run), not a launcher of adaptool's. Each process finds its place from the environment
torchrun sets (:func:`adaptool.distributed.current`)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

#: seconds torchrun waits for the processes to stop on a Ctrl-C before killing them
SHUTDOWN_SECONDS = 3600


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

    from adaptool.cli.output import print_error

    args = [f"--nproc-per-node={nproc}", f"--nnodes={nnodes}", f"--node-rank={node_rank}"]
    if nnodes == 1 and master_addr is None and master_port is None:
        args.append("--standalone")  # one machine: a free port, no address to give
    else:
        args += [f"--master-addr={master_addr or '127.0.0.1'}"]
        args += [f"--master-port={master_port or 29500}"]
    # a Ctrl-C lets every process finish its step and the main one checkpoint, however long
    args += [f"--shutdown-timeout={SHUTDOWN_SECONDS}"]
    args += ["--max-restarts=0", "--module", "adaptool", *argv]
    if "OMP_NUM_THREADS" not in os.environ:  # torchrun would give each process one thread
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        os.environ["OMP_NUM_THREADS"] = str(max(1, (cores or os.cpu_count() or 1) // nproc))
    for name in ("torch.distributed.run", "torch.distributed.elastic"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # its chatter; ours is enough
    try:
        run(parse_args(args))
    except ChildFailedError as exc:
        # a process's own exit (2: adaptool's error) before those torchrun then killed
        failures = sorted(exc.failures.values(), key=lambda f: (f.exitcode <= 0, f.timestamp))
        code = next((f.exitcode for f in failures if f.exitcode > 0), None)
        if code is None:  # killed, every one (the out-of-memory killer, a signal)
            signals = sorted({-f.exitcode for f in failures})
            print_error(
                f"the training processes were killed (signal {', '.join(map(str, signals))}) "
                f"before they could report; if it was the out-of-memory killer, run fewer "
                f"processes per machine or a smaller batch."
            )
            return 1
        return code
    except (KeyboardInterrupt, SignalException):  # Ctrl-C: torchrun passed it on to every
        return 130  # process and waited for them: they agreed on a step and checkpointed it
    finally:
        sys.stdout.flush()
    return 0
