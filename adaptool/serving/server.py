"""Setting a server up: the adapters found (folders or Hub ids), the one base they share
loaded once, quantized as they were trained (or as asked), each attached by name; then
uvicorn serving the app on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptool.errors import AdapterError, AdaptoolError, param
from adaptool.serving.engine import Engine, same_base


@dataclass(frozen=True)
class Named:
    """An adapter to serve: its name in requests, and where it is."""

    name: str
    path: Path
    #: where its base lives when not where it says (a pulled adapter's override)
    base: str | None = None


def parse_adapters(targets: list[str], named: list[str]) -> list[tuple[str, str]]:
    """``TARGET`` arguments (named after their folder or Hub repo) and ``--adapter NAME=WHERE``
    options, as (name, where) pairs; a name given twice is refused."""
    # peft names adapters without dots: a folder's "qwen2.5-tagger" serves as "qwen2-5-tagger"
    pairs = [(Path(t.split("@")[0].rstrip("/")).name.replace(".", "-"), t) for t in targets]
    for option in named:
        name, sep, where = option.partition("=")
        if not sep or not name or not where:
            raise AdaptoolError(
                f"{param('adapter', option)}: give NAME=DIR_OR_HUB_ID (e.g. tagger=runs/tagger)."
            )
        pairs.append((name, where))
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            raise AdaptoolError(
                f"two adapters are named {name!r}; name them apart with "
                f"{param('adapter', 'NAME=DIR')}."
            )
        seen.add(name)
    return pairs


def open_engine(
    adapters: list[tuple[str, str]],
    *,
    base: str | None = None,
    quantization: str | None = None,
    max_batch: int = 8,
    max_queue: int = 32,
    batch_wait: float = 0.05,
) -> Engine:
    """The engine for ``adapters`` ((name, folder or Hub id) pairs) on their shared base
    (``base``: where it lives, or the base alone when there are no adapters)."""
    from adaptool.artifacts.artifact import Artifact
    from adaptool.artifacts.layout import Kind
    from adaptool.hub.locate import locate
    from adaptool.modeling import load_base, load_tokenizer

    found = []
    for name, where in adapters:
        located = locate(where)
        artifact = Artifact.read(located.path, expect=Kind.ADAPTER)
        found.append((Named(name, located.path, located.base_or(base)), artifact))
    if not found and base is None:
        raise AdaptoolError(
            f"nothing to serve: give adapter dirs (or Hub ids), or {param('base', 'PATH')} to "
            f"serve a base model alone."
        )
    record = found[0][1].base_model(found[0][0].base) if found else None
    base_name = record.name if record else str(base)
    for named, artifact in found[1:]:
        theirs = artifact.base_name(named.base)
        if not same_base(theirs, base_name):
            raise AdapterError(
                f"the adapter {named.name} ({artifact.path}) was trained on {theirs}, the "
                f"others on {base_name}: one server holds one base; serve it from another."
            )
    quantizer = _one_quantizer(found, quantization)
    tokenizer = load_tokenizer(base_name, revision=record.revision if record else None)
    dtype = record.dtype if record and record.dtype in ("float32", "bfloat16", "float16") else None
    model = load_base(
        base_name, quantizer, revision=record.revision if record else None, dtype=dtype
    )
    model.eval()
    engine = Engine(
        model,
        tokenizer,
        base_name,
        base_id=Path(base_name.rstrip("/")).name if Path(base_name).exists() else base_name,
        max_batch=max_batch,
        max_queue=max_queue,
        batch_wait=batch_wait,
    )
    for named, _ in found:
        engine.add(named.name, named.path)
    engine.model.eval()
    return engine


def _one_quantizer(found: list[tuple[Named, Any]], override: str | None) -> Any:
    """The quantization the adapters were trained with (they must agree), or ``override``."""
    from adaptool.artifacts.loading import recorded_quantizer

    if override is not None or not found:
        return recorded_quantizer(None, "", override)
    quantizers = [
        recorded_quantizer(artifact.manifest, str(artifact.path)) for _, artifact in found
    ]
    described = [q.describe() for q in quantizers]
    if any(d != described[0] for d in described[1:]):
        which = ", ".join(
            f"{n.name}: {q.name}" for (n, _), q in zip(found, quantizers, strict=True)
        )
        raise AdapterError(
            f"the adapters were trained on differently quantized bases ({which}); one server "
            f"loads its base once: pass {param('quantization', 'BACKEND')} to choose."
        )
    return quantizers[0]


def check_listenable(host: str, port: int) -> None:
    """Refuse, before anything loads, an address the server could not listen on."""
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((host, port))
        except OSError as exc:
            raise AdaptoolError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another "
                f"{param('port', 'PORT')} (or {param('host', 'HOST')})."
            ) from None


def serve(engine: Engine, *, host: str, port: int, api_key: str | None) -> None:
    """Serve until Ctrl-C."""
    import uvicorn

    from adaptool.serving.api import create_app

    engine.start()
    try:
        uvicorn.run(create_app(engine, api_key=api_key), host=host, port=port, log_level="info")
    finally:
        engine.stop()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def running(
    engine: Engine, *, api_key: str | None = None, port: int | None = None
) -> Iterator[str]:
    """``engine`` served on 127.0.0.1 from a background thread until the block ends (a
    notebook's server, and the tests' and benchmarks'); yields its base URL."""
    import threading
    import time

    import uvicorn

    from adaptool.serving.api import create_app

    port = port or free_port()
    config = uvicorn.Config(
        create_app(engine, api_key=api_key), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="adaptool-http", daemon=True)
    engine.start()
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            engine.stop()
            raise AdaptoolError(f"the server did not start on 127.0.0.1:{port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        engine.stop()
