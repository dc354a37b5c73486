"""Training checkpoints without pickle: adapter + optimizer tensors in safetensors, the rest
(step, scheduler, RNG, param groups) in JSON. Each is written to a temporary folder and renamed
into place, so an interrupted save never leaves a half-written checkpoint."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptool.artifacts.layout import (
    ADAPTER_CONFIG,
    CHECKPOINTS,
    INITIAL_ADAPTER,
)
from adaptool.artifacts.layout import CHECKPOINT_OPTIMIZER as OPTIMIZER
from adaptool.artifacts.layout import CHECKPOINT_STATE as STATE
from adaptool.artifacts.outputs import sync as _sync
from adaptool.artifacts.outputs import sync_tree as _sync_tree
from adaptool.errors import AdaptoolError, AdaptoolWarning, describe, param

if TYPE_CHECKING:
    from adaptool.base import PeftMethod
    from adaptool.recipe.schema import Recipe

KEEP = 2
STEP = re.compile(r"step-\d+")
#: names the newest finished checkpoint; moved into place last, after the checkpoint's files
#: are on disk
LATEST = "latest"


def checkpoint_dir(output: Path, step: int) -> Path:
    return output / CHECKPOINTS / f"step-{step:07d}"


def initial_adapter(output: Path) -> Path:
    """Where a run keeps its adapter as initialised (for methods that need it at save)."""
    return output / CHECKPOINTS / INITIAL_ADAPTER


def latest_checkpoint(output: Path) -> Path | None:
    """The newest complete checkpoint under ``output``, if any: the one ``latest`` names, else
    the newest ``step-*`` folder whose state reads (a torn one is passed over with a warning;
    a ``.tmp`` folder never counts)."""
    root = output / CHECKPOINTS
    if not root.is_dir():
        return None
    try:
        named = root / (root / LATEST).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        named = None
    if named is not None and STEP.fullmatch(named.name) and read_state(named) is not None:
        return named
    for candidate in reversed(_steps(root)):
        if read_state(candidate) is not None:
            return candidate
        if (candidate / STATE).exists():
            warnings.warn(
                f"the checkpoint {candidate} is torn (its {STATE} does not read); resuming "
                f"from an earlier one",
                AdaptoolWarning,
                stacklevel=2,
            )
    return None


def read_state(directory: Path) -> dict[str, Any] | None:
    """A checkpoint's state, or None when it is missing, torn or not an object."""
    try:
        state = json.loads((directory / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("step"), int) else None


def _steps(root: Path) -> list[Path]:
    """The checkpoint folders under ``root``: ``step-NNNNNNN``, never a ``.tmp`` one (a save
    that did not finish)."""
    return sorted(p for p in root.glob("step-*") if STEP.fullmatch(p.name) and p.is_dir())


def save_checkpoint(
    output: Path,
    *,
    step: int,
    model: Any,
    method: PeftMethod,
    optimizer_state: dict[str, Any],
    scheduler: Any,
    rng_state: dict[str, Any],
    extra: dict[str, Any],
    other_ranks: list[dict[str, Any]] | None = None,
) -> Path:
    """Write the checkpoint for ``step`` (``optimizer_state``: the optimizer's state dict,
    whole) and keep only the newest ``KEEP``. Written to a ``.tmp`` folder, synced to disk,
    renamed, then named in ``latest``: a crash at any point leaves the previous checkpoint
    the newest complete one."""
    from safetensors.torch import save_file

    final = checkpoint_dir(output, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    method.save_checkpoint(model, tmp)
    opt = optimizer_state
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
    # the other training processes' generators (their dropout), so each resumes its own
    for rank, other in enumerate(other_ranks or [], start=1):
        tensors[f"rng.rank{rank}.torch"] = other["torch"]
        if other.get("cuda") is not None:
            tensors[f"rng.rank{rank}.cuda"] = other["cuda"]
    save_file(tensors, str(tmp / OPTIMIZER))
    state = {
        "step": step,
        "param_groups": opt["param_groups"],
        "optimizer_scalars": scalars,
        "scheduler": scheduler.state_dict(),
        "python_random": _jsonable(rng_state["python"]),
        "python_random_ranks": [_jsonable(o["python"]) for o in other_ranks or []],
        **extra,
    }
    (tmp / STATE).write_text(json.dumps(state, indent=1), encoding="utf-8")
    _sync_tree(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    _sync(final.parent)
    pointer = final.parent / f".{LATEST}.tmp"
    pointer.write_text(final.name + "\n", encoding="utf-8")
    _sync(pointer)
    os.replace(pointer, final.parent / LATEST)
    _sync(final.parent)
    for old in _steps(output / CHECKPOINTS)[:-KEEP]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    directory: Path,
    *,
    model: Any,
    method: PeftMethod,
    optimizer: Any,
    scheduler: Any,
    rank: int = 0,
) -> dict:
    """Restore adapter weights, optimizer, scheduler and RNG (this process's, ``rank``, in a
    multi-process run) from ``directory``; return its state (``step`` and the extras saved
    with it)."""
    load_adapter(directory, model=model, method=method)
    return restore_training(directory, optimizer=optimizer, scheduler=scheduler, rank=rank)


def load_adapter(directory: Path, *, model: Any, method: PeftMethod) -> None:
    """The checkpoint's adapter weights (and what else the method saved) into ``model``: the
    model as the method wrapped it, before it is split between processes (FSDP)."""
    with _restoring(directory):
        method.load_checkpoint(model, directory)


def restore_training(directory: Path, *, optimizer: Any, scheduler: Any, rank: int = 0) -> dict:
    """The optimizer (whole, or each process's shards of it under FSDP), scheduler and this
    process's generators from ``directory``; its state (``step`` and the extras)."""
    state = read_state(directory)
    if state is None:
        raise AdaptoolError(f"the checkpoint {directory} is torn: its {STATE} does not read.")
    with _restoring(directory):
        _restore(directory, state, optimizer, scheduler, rank)
    return state


@contextmanager
def _restoring(directory: Path) -> Iterator[None]:
    try:
        yield
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise AdaptoolError(
            f"the checkpoint {directory} cannot be restored into this run ({describe(exc)}); "
            f"it is damaged or was written for other settings."
        ) from None


def _restore(directory: Path, state: dict, optimizer: Any, scheduler: Any, rank: int) -> None:
    import torch
    from safetensors.torch import load_file

    from adaptool.sharding import load_optimizer_state

    tensors = load_file(str(directory / OPTIMIZER))
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, index, name = key.split(".", 2)
            opt_state.setdefault(int(index), {})[name] = value
    for index, values in state["optimizer_scalars"].items():
        opt_state.setdefault(int(index), {}).update(values)
    load_optimizer_state(optimizer, {"state": opt_state, "param_groups": state["param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    prefix = f"rng.rank{rank}." if rank and f"rng.rank{rank}.torch" in tensors else "rng."
    torch.set_rng_state(tensors[prefix + "torch"])
    if prefix + "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors[prefix + "cuda"])
    ranks = state.get("python_random_ranks") or []
    python = ranks[rank - 1] if 0 < rank <= len(ranks) else state["python_random"]
    random.setstate(_tupled(python))


def resume_key(recipe: Recipe) -> dict[str, Any]:
    """What a run must keep to resume a checkpoint: the base, its quantization and the PEFT
    method with its settings (saved in every checkpoint)."""
    return {
        "model": recipe.model.name,
        "quantization": {
            "backend": recipe.quantization.backend,
            "options": dict(recipe.quantization.options),
        },
        "peft": recipe.peft.model_dump(mode="json"),
    }


def check_resumable(directory: Path, recipe: Recipe, *, world_size: int = 1) -> None:
    """Refuse (touching nothing, before the model is loaded) to resume ``directory`` with a
    recipe whose base, quantization or PEFT settings differ from the run that wrote it, or
    in another number of processes (a step's batches would be spread differently)."""
    state = read_state(directory)
    if state is None:
        raise AdaptoolError(f"the checkpoint {directory} is torn: its {STATE} does not read.")
    saved = state.get("world_size", 1)
    if saved != world_size:
        raise AdaptoolError(
            f"{param('resume', 'True')}: the run of {directory} trained in {saved} "
            f"process{'es' if saved != 1 else ''}, this one runs in {world_size}; resume with "
            f"{saved} (the same effective batch and data order), or start a new run "
            f"({param('overwrite', 'True')})."
        )
    now = resume_key(recipe)
    saved = state.get("recipe")
    if saved is None:  # a checkpoint of an earlier version: its adapter config says enough
        saved, now = _from_adapter_config(directory), _comparable(now)
    changed = [
        f"{key} was {saved_value!r}, the recipe now says {now_value!r}"
        for key, saved_value, now_value in _differences(saved, now)
    ]
    if changed:
        raise AdaptoolError(
            f"resume: the recipe no longer matches the run of {directory} ("
            + "; ".join(changed)
            + "). Resume with the recipe it was started with, or start a new run "
            f"({param('output', 'DIR')} elsewhere, or {param('overwrite', 'True')})."
        )


def _from_adapter_config(directory: Path) -> dict[str, Any]:
    try:
        config = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {"peft": {"r": config.get("r")}}


def _comparable(key: dict[str, Any]) -> dict[str, Any]:
    return {"peft": {"r": key["peft"]["r"]}}


def _differences(saved: Any, now: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(saved, dict) and isinstance(now, dict):
        found = []
        for key in sorted(set(saved) | set(now)):
            found += _differences(saved.get(key), now.get(key), f"{prefix}{key}.")
        return found
    return [] if saved == now else [(prefix.rstrip("."), saved, now)]


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
