"""Writing a safetensors file one tensor at a time: the header is computed from shapes and
dtypes first, then each tensor is produced, written and dropped, so a merge holds one tensor
in memory rather than a whole shard (``safetensors.torch.save_file`` builds the file in RAM)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: torch dtype name -> safetensors dtype tag
TAGS = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}
SIZES = {
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F64": 8,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


def tag_of(dtype: Any) -> str:
    return TAGS[str(dtype).removeprefix("torch.")]


def write_streamed(
    path: Path,
    layout: Sequence[tuple[str, str, list[int]]],
    produce: Callable[[str], Any],
    metadata: dict[str, str] | None = None,
) -> int:
    """Write ``layout`` (name, dtype tag, shape) to ``path``, asking ``produce(name)`` for each
    tensor in turn. Returns the file size."""
    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, tag, shape in layout:
        size = math.prod(shape) * SIZES[tag]
        header[name] = {"dtype": tag, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for name, tag, shape in layout:
            tensor = produce(name).contiguous()
            if tag_of(tensor.dtype) != tag or list(tensor.shape) != list(shape):
                raise ValueError(
                    f"{name}: produced {tensor.dtype} {tuple(tensor.shape)}, "
                    f"announced {tag} {tuple(shape)}"
                )
            if tensor.numel():
                fh.write(tensor.view(-1).view(_byte_dtype()).numpy().data)
            del tensor
    return 8 + len(raw) + offset


def _byte_dtype() -> Any:
    import torch

    return torch.uint8
