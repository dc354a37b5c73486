"""Terminal output shared by the commands: one rich console each for stdout and stderr."""

from __future__ import annotations

import functools

from rich.console import Console
from rich.text import Text

from adaptool.hub.client import redact


@functools.cache
def console() -> Console:
    return Console(highlight=False, soft_wrap=True)


@functools.cache
def error_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_error(message: BaseException | str) -> None:
    """One paragraph, no traceback; the text is printed as is (no markup, no hard wraps).
    Among training processes, a message several of them hit is printed by the first."""
    said = redact(str(message))
    if not first_to_say(said):
        return
    text = Text("error: ", style="bold red")
    text.append(said)
    error_console().print(text, soft_wrap=True)


def first_to_say(message: str) -> bool:
    """True unless another process of this training world (the processes one torchrun
    agent started on this machine) has already printed ``message``: each claims it by
    creating a file named after it, and only the one that creates it prints."""
    import hashlib
    import os
    import tempfile
    from pathlib import Path

    from adaptool.distributed import current

    if not current().distributed:
        return True
    run = os.environ.get("TORCHELASTIC_RUN_ID", "")
    world = hashlib.sha256(f"{run}-{os.getppid()}-{os.environ.get('MASTER_PORT')}".encode())
    world = world.hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"adaptool-said-{world}"
    name = hashlib.sha256(message.encode()).hexdigest()[:32]
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        os.close(os.open(folder / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    except OSError:
        return True  # no temp dir to share: better twice than never
    return True
