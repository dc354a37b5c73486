"""One base model in memory, any number of adapters attached to it by name, and a worker
that batches the requests waiting together into one ``generate`` call.

LoRA-family adapters (and the base itself) share a batch: peft runs each row through its own
adapter (``adapter_names=``). Other methods are batched per adapter. Each row keeps its own
sampling (greedy, or temperature and top-p with its own seeded generator), its own stop
strings and token budget; its text is handed to the caller as it grows. A bounded queue
refuses past its size, and a caller that goes away stops its rows at the next token."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptool.base import peft_type_name
from adaptool.errors import AdapterError, AdaptoolError

if TYPE_CHECKING:
    from adaptool.artifacts.artifact import Artifact
    from adaptool.base import Formatter

#: peft types whose layers run a mixed batch, each row through its own adapter
MIXABLE = {"LORA"}
#: the name peft gives "no adapter" in a mixed batch
BASE_ROW = "__base__"


class QueueFull(AdaptoolError):
    """More requests wait than the server takes; the caller should retry later."""

    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"the server is busy; retry in {retry_after} s")


@dataclass
class Adapter:
    """An adapter served by name."""

    name: str
    artifact: Artifact
    tokenizer: Any
    formatter: Formatter | None
    peft_type: str

    @property
    def mixable(self) -> bool:
        # peft refuses adapter_names with DoRA (its magnitude is per adapter, not per row)
        return self.peft_type in MIXABLE and not self.artifact.config.get("use_dora")

    def summary(self) -> dict[str, Any]:
        """What ``/v1/models`` says of it: the manifest's essentials."""
        m = self.artifact.manifest
        out: dict[str, Any] = {
            "kind": "adapter",
            "path": str(self.artifact.path),
            "method": self.artifact.method,
        }
        if m is None:
            return out
        return out | {
            "base": m.base_model.name,
            "quantization": m.backend,
            "formatter": m.formatter.name if m.formatter else None,
            "created": m.created,
            "r": m.peft.r if m.peft else None,
            "train_loss": (m.results or {}).get("train_loss"),
            "eval_loss": (m.results or {}).get("eval_loss"),
            "steps": (m.training or {}).get("steps"),
        }


@dataclass
class Sampling:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


class Job:
    """One request: ``n`` completions of one prompt by one model (an adapter's name, or None
    for the base). Its events reach the caller's event loop as they happen:
    ``("delta", index, text)``, ``("done", index, finish_reason, tokens)``, ``("error",
    message)`` and, last, ``("end",)``."""

    def __init__(
        self,
        adapter: str | None,
        prompt_ids: list[int],
        sampling: Sampling,
        *,
        n: int = 1,
        loop: asyncio.AbstractEventLoop | None = None,
        on_event: Callable[[tuple], None] | None = None,
        stream: bool = True,
    ) -> None:
        self.adapter = adapter
        self.prompt_ids = prompt_ids
        self.sampling = sampling
        self.n = n
        self.loop = loop
        self.events: asyncio.Queue | None = asyncio.Queue() if loop is not None else None
        self.log: list[tuple] = []  # every event, for callers without a loop
        self.on_event = on_event  # called in the generating thread, as each event happens
        #: whether the loop hears each piece of text (False: only the ends; the text is in
        #: ``log``), so a caller waiting for the whole reply is not woken every token
        self.stream = stream
        self.cancelled = threading.Event()
        self.finished = threading.Event()

    def emit(self, *event: Any) -> None:
        self.log.append(event)
        if self.on_event is not None:
            self.on_event(event)
        if (
            self.loop is not None
            and self.events is not None
            and (self.stream or event[0] != "delta")
        ):
            try:
                self.loop.call_soon_threadsafe(self.events.put_nowait, event)
            except RuntimeError:  # the caller's loop has closed: it went away
                self.cancelled.set()
        if event[0] == "end":
            self.finished.set()


class Row:
    """One completion being generated: its sampling, its tokens and text so far."""

    def __init__(self, job: Job, index: int, tokenizer: Any, eos: set[int]) -> None:
        import torch

        self.job, self.index, self.tokenizer, self.eos = job, index, tokenizer, eos
        s = job.sampling
        self.generator = None
        if s.temperature > 0:
            self.generator = torch.Generator()
            seed = s.seed if s.seed is not None else random.randrange(2**62)
            self.generator.manual_seed((seed + index) % 2**63)  # any integer a client sends
        self.tokens: list[int] = []
        self.emitted = 0
        self.done = False
        self.hold = max((len(x) for x in s.stop), default=1) - 1

    def choose(self, scores: Any) -> int:
        """The next token from the processed scores: argmax when greedy, else sampled with
        the row's temperature and top-p from its own generator."""
        import torch

        s = self.job.sampling
        if self.generator is None:
            return int(scores.argmax())
        probs = torch.softmax(scores.float() / s.temperature, dim=-1)
        if s.top_p < 1.0:
            ordered, order = probs.sort(descending=True)
            keep = ordered.cumsum(-1) - ordered < s.top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
        return int(torch.multinomial(probs.cpu(), 1, generator=self.generator))

    def take(self, token: int) -> None:
        """The token generated for this row: its text goes out, up to a stop string."""
        if self.done:
            return
        if self.job.cancelled.is_set():
            self.done = True
            return
        if token in self.eos:
            self._finish("stop", self._text())
            return
        self.tokens.append(token)
        text = self._text()
        stop = self.job.sampling.stop
        cut = min((i for i in (text.find(x) for x in stop) if i >= 0), default=-1)
        if cut >= 0:
            self._finish("stop", text[:cut])
        elif len(self.tokens) >= self.job.sampling.max_tokens:
            self._finish("length", text)
        else:
            safe = len(text) - self.hold
            if text.endswith("\ufffd"):  # a character cut between tokens: wait for the rest
                safe = min(safe, len(text) - 1)
            self._send(text[:safe])

    def _text(self) -> str:
        return self.tokenizer.decode(self.tokens, skip_special_tokens=True)

    def _send(self, text: str) -> None:
        if len(text) > self.emitted:
            self.job.emit("delta", self.index, text[self.emitted :])
            self.emitted = len(text)

    def _finish(self, reason: str, text: str) -> None:
        self._send(text)
        self.done = True
        self.job.emit("done", self.index, reason, len(self.tokens))


@dataclass
class Stats:
    requests: int = 0
    batches: int = 0
    rows: int = 0
    mixed_batches: int = 0
    largest_batch: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def as_dict(self, queue: int) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "batches": self.batches,
            "rows": self.rows,
            "mixed_batches": self.mixed_batches,
            "largest_batch": self.largest_batch,
            "generated_tokens": self.tokens,
            "tokens_per_s": round(self.tokens / self.seconds, 2) if self.seconds else 0.0,
            "queue_depth": queue,
        }


class Engine:
    """The model, its adapters and the batching worker (started by :meth:`start`)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        base_name: str,
        *,
        base_id: str | None = None,
        max_batch: int = 8,
        max_queue: int = 32,
        context: int | None = None,
        batch_wait: float = 0.05,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.base_name = base_name
        #: the name requests use for the base without an adapter
        self.base_id = base_id or Path(base_name).name
        self.adapters: dict[str, Adapter] = {}
        self.max_batch = max_batch
        self.max_queue = max_queue
        #: seconds the worker waits, once a request is in, for others to join its batch
        self.batch_wait = batch_wait
        #: the positions a row may use: its prompt and its reply together
        self.context = context or context_length(model, tokenizer)
        self.stats = Stats()
        self._pending: deque[Job] = deque()
        self._wake = threading.Condition()
        self._model_lock = threading.Lock()  # adapters change between batches, never during
        self._worker: threading.Thread | None = None
        self._stopping = False
        #: rows being generated now
        self.running = 0

    # -- adapters ----------------------------------------------------------------------------
    def add(self, name: str, folder: Path) -> Adapter:
        """Attach the adapter in ``folder`` as ``name``; an adapter of another base, or one
        that does not fit this one, is refused with the reason."""
        from adaptool.artifacts.artifact import Artifact
        from adaptool.artifacts.fit import check_fits
        from adaptool.artifacts.layout import Kind
        from adaptool.artifacts.loading import recorded_formatter
        from adaptool.errors import PluginError
        from adaptool.modeling import load_tokenizer

        if name in self.adapters or name == self.base_id:
            raise AdapterError(f"the name {name!r} is taken; give the adapter another one.")
        if "." in name or name == BASE_ROW:
            raise AdapterError(
                f"the adapter name {name!r} cannot be used: peft names adapters without dots "
                f"and keeps {BASE_ROW!r} for the base; name it with NAME=DIR (e.g. "
                f"{name.replace('.', '-').strip('_') or 'adapter'})."
            )
        artifact = Artifact.read(Path(folder), expect=Kind.ADAPTER)
        trained_on = artifact.base_name()
        if not same_base(trained_on, self.base_name):
            raise AdapterError(
                f"the adapter {artifact.path} was trained on {trained_on}, and this server's "
                f"base is {self.base_name}: an adapter only means something on its own base. "
                f"Serve it from a server of {trained_on}."
            )
        peft_type = peft_type_name(artifact.config.get("peft_type"))
        held = {a.peft_type for a in self.adapters.values()}
        if held and peft_type not in held:
            raise AdapterError(
                f"the adapter {artifact.path} is {peft_type or 'of an unknown method'}, and this "
                f"server holds {', '.join(sorted(held))} adapters: peft keeps one method per "
                f"model. Serve it from another server."
            )
        check_fits(artifact, base=self.base_name)
        try:
            formatter = recorded_formatter(artifact.manifest, str(artifact.path))
        except PluginError:  # raw prompts still work
            formatter = None
        tokenizer = load_tokenizer(str(artifact.path)) if artifact.has_tokenizer else self.tokenizer
        with self._model_lock:
            self.model = attach_named(self.model, artifact.path, name, self.base_name)
        adapter = Adapter(name, artifact, tokenizer, formatter, peft_type)
        self.adapters[name] = adapter
        return adapter

    def remove(self, name: str) -> None:
        if name not in self.adapters:
            raise AdapterError(f"no adapter named {name!r} is loaded.")
        with self._model_lock:
            self.model.delete_adapter(name)
            del self.adapters[name]

    def end_tokens(self, adapters: list[str | None]) -> set[int]:
        """The tokens that end a reply: the model's generation config's (a chat model's
        end-of-turn token among them) and the tokenizers' EOS."""
        config = getattr(self.model, "generation_config", None)
        ids = getattr(config, "eos_token_id", None)
        found = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
        for name in {None, *adapters}:
            eos = self.tokenizer_for(name or "").eos_token_id
            if eos is not None:
                found.add(eos)
        return found

    def tokenizer_for(self, model: str) -> Any:
        return self.adapters[model].tokenizer if model in self.adapters else self.tokenizer

    # -- requests ------------------------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        """Queue ``job`` for the worker; past the queue's size, QueueFull."""
        if job.n > self.max_queue:
            raise AdaptoolError(
                f"n = {job.n} completions is more than this server queues ({self.max_queue})"
            )
        with self._wake:
            waiting = sum(j.n for j in self._pending)
            if waiting + job.n > self.max_queue:
                raise QueueFull(retry_after=max(1, round(self._batch_seconds())))
            self._pending.append(job)
            self.stats.requests += 1
            self._wake.notify()
        return job

    def queue_depth(self) -> int:
        with self._wake:
            return sum(j.n for j in self._pending)

    def run_now(self, *jobs: Job) -> Job:
        """Generate ``jobs`` together in this thread (no worker), as the worker batches
        them: ``adaptool chat`` and tests. Returns the first."""
        self._generate(list(jobs))
        return jobs[0]

    def start(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="adaptool-serve", daemon=True)
            self._worker.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._worker is not None:
            self._worker.join(timeout=30)

    def _batch_seconds(self) -> float:
        return self.stats.seconds / self.stats.batches if self.stats.batches else 1.0

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                # requests sent together reach the server a few milliseconds apart: a short
                # wait lets them join one batch instead of the first running alone
                deadline = time.monotonic() + self.batch_wait
                while sum(j.n for j in self._pending) < self.max_batch and not self._stopping:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(timeout=left)
                jobs, rows, width, budget = [], 0, 0, 0
                while self._pending:
                    job = self._pending[0]
                    if job.cancelled.is_set():
                        self._pending.popleft().emit("end")
                        continue
                    # every row of a batch steps as far as its longest prompt plus its
                    # largest budget: that must fit the model's positions
                    w = max(width, len(job.prompt_ids))
                    b = max(budget, job.sampling.max_tokens)
                    fits = rows + job.n <= self.max_batch and w + b <= self.context
                    if jobs and not fits:
                        break
                    jobs.append(self._pending.popleft())
                    rows, width, budget = rows + job.n, w, b
            if jobs:
                self._generate(jobs)

    def _generate(self, jobs: list[Job]) -> None:
        """The jobs' rows in as few generate calls as the adapters allow (adapters are not
        attached or detached meanwhile)."""
        with self._model_lock:
            groups: dict[str, list[Job]] = {}
            for job in jobs:
                if job.adapter is not None and job.adapter not in self.adapters:
                    job.emit("error", f"the adapter {job.adapter!r} was unloaded", 404)
                    job.emit("end")
                    continue
                adapter = self.adapters.get(job.adapter) if job.adapter else None
                key = "" if adapter is None or adapter.mixable else adapter.name
                groups.setdefault(key, []).append(job)
            for group in groups.values():
                self._run_group(group)

    def _run_group(self, group: list[Job]) -> None:
        """One generate call; its failure fails its requests, not the server."""
        from adaptool.errors import describe

        try:
            self.running = sum(job.n for job in group)
            self._run(group)
        except Exception as exc:
            for job in group:
                job.emit("error", f"generation failed: {describe(exc)}", 500)
        finally:
            self.running = 0
            for job in group:
                job.emit("end")

    def _run(self, jobs: list[Job]) -> None:
        import torch
        from transformers import LogitsProcessor, StoppingCriteria
        from transformers.generation.streamers import BaseStreamer

        from adaptool.generate import left_padded

        tokenizer = self.tokenizer
        eos = self.end_tokens([job.adapter for job in jobs])
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        rows = [
            Row(job, i, self.tokenizer_for(job.adapter or ""), eos)
            for job in jobs
            for i in range(job.n)
        ]
        ids, mask = left_padded([row.job.prompt_ids for row in rows], pad)

        class Choose(LogitsProcessor):
            """Each row's own choice of token (HF then takes it greedily)."""

            def __call__(self, input_ids: Any, scores: Any) -> Any:
                chosen = torch.full_like(scores, float("-inf"))
                for r, row in enumerate(rows):
                    token = pad if row.done else row.choose(scores[r])
                    chosen[r, token] = 0.0
                return chosen

        class Take(BaseStreamer):
            first = True

            def put(self, value: Any) -> None:
                if self.first:  # the prompt
                    self.first = False
                    return
                for r, token in enumerate(value.tolist()):
                    rows[r].take(token)

            def end(self) -> None:
                pass

        class Done(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.tensor([row.done for row in rows], device=input_ids.device)

        kwargs: dict[str, Any] = {}
        names = [row.job.adapter for row in rows]
        model = self.model
        base_only: Any = contextlib.nullcontext()
        if self.adapters and all(n is None for n in names):
            base_only = model.disable_adapter()
        elif len(set(names)) > 1:  # LoRA-family adapters (and the base) mixed row by row
            kwargs["adapter_names"] = [n or BASE_ROW for n in names]
        elif names[0] is not None:
            model.set_adapter(names[0])
        dev = next(model.parameters()).device
        began = time.monotonic()
        with torch.no_grad(), base_only:
            model.generate(
                input_ids=ids.to(dev),
                attention_mask=mask.to(dev),
                max_new_tokens=max(row.job.sampling.max_tokens for row in rows),
                pad_token_id=pad,
                eos_token_id=sorted(eos) or None,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                logits_processor=[Choose()],
                stopping_criteria=[Done()],
                streamer=Take(),
                **kwargs,
            )
        for row in rows:  # the budget ran out with the batch's (or the caller went away)
            if not row.done:
                row._finish("length", row._text())
        s = self.stats
        s.seconds += time.monotonic() - began
        s.batches += 1
        s.rows += len(rows)
        s.largest_batch = max(s.largest_batch, len(rows))
        s.tokens += sum(len(row.tokens) for row in rows)
        if len({n or BASE_ROW for n in names}) > 1:
            s.mixed_batches += 1


def attach_named(model: Any, folder: Path, name: str, base_name: str) -> Any:
    """``model`` with the adapter in ``folder`` attached as ``name`` (the first one wraps the
    base in a PeftModel); one that does not fit is an AdapterError naming both."""
    from peft import PeftModel

    from adaptool.errors import describe, param

    try:
        if isinstance(model, PeftModel):
            model.load_adapter(str(folder), adapter_name=name)
            return model
        return PeftModel.from_pretrained(model, str(folder), adapter_name=name)
    except Exception as exc:
        raise AdapterError(
            f"the adapter {folder} does not fit the base {base_name}: {describe(exc)}. Pass "
            f"{param('base')} with the model it was trained on."
        ) from None


def same_base(trained_on: str, served: str) -> bool:
    """Whether an adapter recorded as trained on ``trained_on`` belongs on ``served`` (a
    Hub id, or a local folder, compared resolved)."""
    if trained_on == served:
        return True
    a, b = Path(trained_on).expanduser(), Path(served).expanduser()
    return a.exists() and b.exists() and a.resolve() == b.resolve()


def context_length(model: Any, tokenizer: Any) -> int:
    """The longest prompt the server takes: the model's positions, else the tokenizer's
    stated limit, else 2048 (ALiBi models such as BLOOM have no fixed limit)."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 1_000_000 else 2048
