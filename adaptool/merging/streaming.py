"""Writing a safetensors file one tensor at a time: the header is computed from shapes and
dtypes first, then each tensor is produced, written and dropped, so a merge holds one tensor
in memory rather than a whole shard (``safetensors.torch.save_file`` builds the file in RAM).

A tensor the merge leaves unchanged is not loaded at all: ``produce`` returns a
:class:`ByteRange` of the source file and the kernel copies those bytes file to file
(``os.copy_file_range``), which is the cheapest way to move them."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
    "U16": 2,
    "U32": 4,
    "U64": 8,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
_CHUNK = 64 << 20


@dataclass(frozen=True)
class Entry:
    """One tensor of a safetensors file: its dtype tag, shape and where its bytes lie."""

    name: str
    tag: str
    shape: list[int]
    start: int  # absolute file offset of the first byte
    length: int


@dataclass(frozen=True)
class ByteRange:
    """'Copy these bytes of that file unchanged' — what ``produce`` returns for a tensor the
    merge does not touch."""

    path: Path
    start: int
    length: int


def tag_of(dtype: Any) -> str:
    return TAGS[str(dtype).removeprefix("torch.")]


MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


def read_layout(path: Path) -> list[Entry]:
    """The tensors of a safetensors file, in file order, from its JSON header alone. A file
    that is not safetensors raises ValueError (never a huge read: the header size is checked
    against the file's size first)."""
    total = path.stat().st_size
    with path.open("rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        if total < 8 or not 2 <= size <= min(MAX_HEADER, total - 8):
            raise ValueError(f"{path.name} is not a safetensors file (bad header size)")
        try:
            header = json.loads(fh.read(size))
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"{path.name} is not a safetensors file (bad header)") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path.name} is not a safetensors file (header is not an object)")
    base = 8 + size
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = (int(x) for x in info["data_offsets"])
            shape = [int(x) for x in info["shape"]]
            tag = str(info["dtype"])
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"{path.name}: tensor {name!r} has a malformed entry") from None
        if tag not in SIZES or not 0 <= start <= end or base + end > total:
            raise ValueError(
                f"{path.name}: tensor {name!r} lies outside the file or has dtype {tag}"
            )
        if end - start != math.prod(shape) * SIZES[tag]:
            raise ValueError(f"{path.name}: tensor {name!r} has the wrong number of bytes")
        entries.append(Entry(name, tag, shape, base + start, end - start))
    return sorted(entries, key=lambda e: e.start)


def write_streamed(
    path: Path,
    layout: Sequence[tuple[str, str, list[int]]],
    produce: Callable[[str], Any],
    metadata: dict[str, str] | None = None,
) -> int:
    """Write ``layout`` (name, dtype tag, shape) to ``path``, asking ``produce(name)`` for each
    tensor in turn (a tensor, or a :class:`ByteRange` to copy). Returns the file size."""
    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, tag, shape in layout:
        size = math.prod(shape) * SIZES[tag]
        header[name] = {"dtype": tag, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb", buffering=0) as fh:
        _write_all(fh, len(raw).to_bytes(8, "little") + raw)
        for name, tag, shape in layout:
            item = produce(name)
            expected = math.prod(shape) * SIZES[tag]
            if isinstance(item, ByteRange):
                if item.length != expected:
                    raise ValueError(f"{name}: {item.length} bytes to copy, announced {expected}")
                _copy_range(item, fh)
                continue
            tensor = item.contiguous()
            if tag_of(tensor.dtype) != tag or list(tensor.shape) != list(shape):
                raise ValueError(
                    f"{name}: produced {tensor.dtype} {tuple(tensor.shape)}, "
                    f"announced {tag} {tuple(shape)}"
                )
            if tensor.numel():
                _write_all(fh, memoryview(tensor.view(-1).view(_byte_dtype()).numpy()))
            del tensor
    return 8 + len(raw) + offset


def _write_all(fh: Any, data: bytes | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = fh.write(view[:_CHUNK])
        view = view[written:]


def _copy_range(source: ByteRange, fh: Any) -> None:
    with source.path.open("rb", buffering=0) as src:
        start, left = source.start, source.length
        try:
            while left:
                copied = os.copy_file_range(src.fileno(), fh.fileno(), min(left, _CHUNK), start)
                if copied == 0:
                    raise ValueError(f"{source.path} ended before byte {start + left}")
                start += copied
                left -= copied
        except (AttributeError, OSError):  # no copy_file_range here (macOS, some filesystems)
            src.seek(start)
            while left:
                chunk = src.read(min(left, _CHUNK))
                if not chunk:
                    raise ValueError(f"{source.path} ended before byte {start + left}") from None
                _write_all(fh, chunk)
                start += len(chunk)
                left -= len(chunk)


def _byte_dtype() -> Any:
    import torch

    return torch.uint8
