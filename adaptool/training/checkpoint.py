"""Training checkpoints without pickle: adapter + optimizer tensors in safetensors, the rest
(step, scheduler, RNG, param groups) in JSON. Each is written to a temporary folder and renamed
into place, so an interrupted save never leaves a half-written checkpoint."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

from adaptool.artifacts.layout import ADAPTER_WEIGHTS, CHECKPOINTS
from adaptool.artifacts.layout import CHECKPOINT_OPTIMIZER as OPTIMIZER
from adaptool.artifacts.layout import CHECKPOINT_STATE as STATE

KEEP = 2
STEP = re.compile(r"step-\d+")


def checkpoint_dir(output: Path, step: int) -> Path:
    return output / CHECKPOINTS / f"step-{step:07d}"


def latest_checkpoint(output: Path) -> Path | None:
    """The newest complete checkpoint under ``output``, if any."""
    root = output / CHECKPOINTS
    if not root.is_dir():
        return None
    done = sorted(p for p in _steps(root) if (p / STATE).is_file())
    return done[-1] if done else None


def _steps(root: Path) -> list[Path]:
    """The checkpoint folders under ``root``: ``step-NNNNNNN``, never a ``.tmp`` one (a save
    that did not finish)."""
    return sorted(p for p in root.glob("step-*") if STEP.fullmatch(p.name) and p.is_dir())


def save_checkpoint(
    output: Path,
    *,
    step: int,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    rng_state: dict[str, Any],
    extra: dict[str, Any],
) -> Path:
    """Write the checkpoint for ``step`` and keep only the newest ``KEEP``."""
    from safetensors.torch import save_file

    final = checkpoint_dir(output, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp))
    opt = optimizer.state_dict()
    tensors: dict[str, Any] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in opt["state"].items():
        for key, value in state.items():
            if hasattr(value, "shape"):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    tensors["rng.torch"] = rng_state["torch"]
    if rng_state.get("cuda") is not None:
        tensors["rng.cuda"] = rng_state["cuda"]
    save_file(tensors, str(tmp / OPTIMIZER))
    state = {
        "step": step,
        "param_groups": opt["param_groups"],
        "optimizer_scalars": scalars,
        "scheduler": scheduler.state_dict(),
        "python_random": _jsonable(rng_state["python"]),
        **extra,
    }
    (tmp / STATE).write_text(json.dumps(state, indent=1), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in _steps(output / CHECKPOINTS)[:-KEEP]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(directory: Path, *, model: Any, optimizer: Any, scheduler: Any) -> dict:
    """Restore adapter weights, optimizer, scheduler and RNG from ``directory``; return its
    state (``step`` and the extras saved with it)."""
    import torch
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = json.loads((directory / STATE).read_text(encoding="utf-8"))
    adapter = load_file(str(directory / ADAPTER_WEIGHTS))
    set_peft_model_state_dict(model, adapter)
    tensors = load_file(str(directory / OPTIMIZER))
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, index, name = key.split(".", 2)
            opt_state.setdefault(int(index), {})[name] = value
    for index, values in state["optimizer_scalars"].items():
        opt_state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    random.setstate(_tupled(state["python_random"]))
    return state


def capture_rng() -> dict[str, Any]:
    import torch

    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "python": random.getstate(),
    }


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, tuple | list) else value


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value
