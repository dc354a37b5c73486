"""The HTTP API: OpenAI's ``/v1/completions``, ``/v1/chat/completions`` and ``/v1/models``
(streaming as server-sent events), adapters loaded and unloaded while running, ``/health``,
``/metrics`` and the playground page at ``/``. Errors are OpenAI-shaped JSON with the
status that fits (400 bad request, 401 key, 413 prompt too long, 429 busy), never a trace;
the API key is compared in constant time and never logged."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from importlib.resources import files
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from adaptool.errors import AdaptoolError
from adaptool.serving.chat import render_chat
from adaptool.serving.engine import Engine, Job, QueueFull, Sampling
from adaptool.serving.schemas import AdapterLoad, ChatRequest, CompletionRequest, Sampled

#: tokens a request generates when it does not say (OpenAI's default for completions)
DEFAULT_MAX_TOKENS = 16
#: seconds between checks that a waiting caller is still there
POLL = 0.5


class ApiError(Exception):
    """An error the API answers with, in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind, self.headers = kind, headers

    def response(self) -> JSONResponse:
        body = {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class ClientGone(Exception):
    """The caller went away while its request was waiting."""


def create_app(engine: Engine, *, api_key: str | None = None) -> FastAPI:
    """The server's app over ``engine`` (with ``api_key``, every ``/v1`` route needs it as a
    bearer token, and adapters can be loaded and unloaded)."""
    api_key = api_key or None  # an empty key is no key (and no admin routes)
    app = FastAPI(title="adaptool", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message, where = "the request body is not valid JSON", None
        text = f"{where}: {message}" if where else message
        return ApiError(400, text, param=where, code="invalid_parameter").response()

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return ApiError(exc.status_code, str(exc.detail), code=code).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return ApiError(500, "internal error in the server", kind="server_error").response()

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.strip().encode(), api_key.encode()
        ):
            raise ApiError(
                401,
                "missing or incorrect API key: send it as 'Authorization: Bearer KEY'",
                code="invalid_api_key",
            )

    def admin(request: Request) -> None:
        if api_key is None:
            raise ApiError(
                403,
                "loading and unloading adapters needs the server started with --api-key",
                code="admin_disabled",
            )
        authorize(request)

    def resolve(model: str) -> str | None:
        """A request's ``model``: an adapter's name, or None for the base's."""
        if model in engine.adapters:
            return model
        if model == engine.base_id:
            return None
        known = ", ".join([engine.base_id, *engine.adapters])
        raise ApiError(
            400,
            f"the model {model!r} is not served here (served: {known})",
            param="model",
            code="model_not_found",
        )

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return files("adaptool.serving").joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "adapters": len(engine.adapters)}  # names: /v1/models

    @app.get("/metrics")
    async def metrics() -> dict[str, Any]:
        return engine.stats.as_dict(engine.queue_depth())

    keyed = [Depends(authorize)]  # checked before the body is read

    @app.get("/v1/models", dependencies=keyed)
    async def models() -> dict[str, Any]:
        data = [_model_card(engine.base_id, {"kind": "base", "path": engine.base_name})]
        data += [_model_card(name, a.summary()) for name, a in sorted(engine.adapters.items())]
        return {"object": "list", "data": data}

    @app.get("/v1/adapters/{name:path}/metrics", dependencies=keyed)
    async def adapter_metrics(name: str) -> dict[str, Any]:
        """The adapter's training records (its loss curve, for the page)."""
        if name not in engine.adapters:
            resolve(name)
            return {"model": name, "records": []}
        path = engine.adapters[name].artifact.path / "metrics.jsonl"
        records = []
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
        return {"model": name, "records": records}

    @app.post("/v1/adapters", dependencies=[Depends(admin)])
    async def load_adapter(body: AdapterLoad) -> dict[str, Any]:
        from adaptool.hub.locate import locate

        try:
            located = await asyncio.to_thread(locate, body.path)
            adapter = await asyncio.to_thread(engine.add, body.name, located.path)
        except AdaptoolError as exc:
            raise ApiError(400, str(exc), param="path", code="adapter_refused") from None
        return _model_card(body.name, adapter.summary())

    @app.delete("/v1/adapters/{name:path}", dependencies=[Depends(admin)])
    async def unload_adapter(name: str) -> dict[str, Any]:
        try:
            await asyncio.to_thread(engine.remove, name)
        except AdaptoolError as exc:
            raise ApiError(404, str(exc), param="name", code="model_not_found") from None
        return {"id": name, "object": "model", "deleted": True}

    @app.post("/v1/completions", dependencies=keyed)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        model = resolve(body.model)
        tokenizer = engine.tokenizer_for(model or "")
        formatter = None
        if body.adaptool is not None and body.adaptool.row is not None:
            adapter = engine.adapters.get(model or "")
            formatter = adapter.formatter if adapter else None
            if formatter is None:
                raise ApiError(
                    400,
                    f"the model {body.model!r} has no formatter to build a prompt from a row; "
                    f"send the prompt itself",
                    param="adaptool.row",
                )
            try:
                prompts = [formatter.generation_prompt(body.adaptool.row, tokenizer)]
            except (AdaptoolError, KeyError, TypeError, ValueError) as exc:
                raise ApiError(
                    400, f"the row does not fit {formatter.name}: {exc}", param="adaptool.row"
                ) from None
            special = not formatter.prompt_has_special_tokens
        else:
            prompts, special = body.prompts, True
        ids = [_encode(tokenizer, p, special, engine.context) for p in prompts]
        jobs = _submit(engine, model, ids, body, body.max_tokens)
        reply = _Reply("cmpl", "text_completion", body.model, formatter)
        if body.stream:
            return _stream(reply.completion_chunks(jobs, body), jobs)
        results = await _collect(jobs, request)
        return reply.completion(results, ids, body.n)

    @app.post("/v1/chat/completions", dependencies=keyed)
    async def chat(body: ChatRequest, request: Request) -> Any:
        model = resolve(body.model)
        tokenizer = engine.tokenizer_for(model or "")
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            text = render_chat(tokenizer, messages, body.model)
        except AdaptoolError as exc:
            raise ApiError(400, str(exc), param="messages") from None
        ids = [_encode(tokenizer, text, False, engine.context)]
        budget = body.max_completion_tokens or body.max_tokens
        jobs = _submit(engine, model, ids, body, budget, default=None)  # chat: to the end
        reply = _Reply("chatcmpl", "chat.completion", body.model, None)
        if body.stream:
            return _stream(reply.chat_chunks(jobs, body), jobs)
        results = await _collect(jobs, request)
        return reply.chat(results, ids, body.n)

    return app


def _model_card(name: str, details: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "adaptool",
        "adaptool": details,
    }


def _encode(tokenizer: Any, text: str, special: bool, limit: int) -> list[int]:
    ids = tokenizer(text, add_special_tokens=special)["input_ids"]
    if not ids:
        raise ApiError(
            400, "the prompt is empty: there is nothing to continue from", param="prompt"
        )
    if len(ids) > limit:
        raise ApiError(
            413,
            f"the prompt is {len(ids)} tokens; this server takes at most {limit}",
            param="prompt",
            code="context_length_exceeded",
        )
    return ids


def _submit(
    engine: Engine,
    model: str | None,
    ids: list[list[int]],
    body: Sampled,
    max_tokens: int | None,
    *,
    default: int | None = DEFAULT_MAX_TOKENS,
) -> list[Job]:
    """Queue a job per prompt. Without ``max_tokens``, ``default`` (None: the rest of the
    context) within the context; a prompt and ``max_tokens`` beyond it are a 400."""
    longest = max(len(p) for p in ids)
    room = engine.context - longest
    if max_tokens is not None and max_tokens > room:
        raise ApiError(
            400,
            f"the prompt ({longest} tokens) and max_tokens ({max_tokens}) exceed the model's "
            f"context of {engine.context} tokens; ask for at most {room}",
            param="max_tokens",
            code="context_length_exceeded",
        )
    if body.n > engine.max_queue:
        raise ApiError(
            400, f"n = {body.n} is more than this server queues ({engine.max_queue})", param="n"
        )
    loop = asyncio.get_running_loop()
    sampling = Sampling(
        max_tokens=max_tokens or min(default or room, room),
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stops,
        seed=body.seed,
    )
    jobs: list[Job] = []
    try:
        for prompt in ids:
            job = Job(model, prompt, sampling, n=body.n, loop=loop, stream=body.stream)
            jobs.append(engine.submit(job))
    except QueueFull as exc:
        for job in jobs:
            job.cancelled.set()
        raise ApiError(
            429,
            f"the server is busy ({engine.max_queue} completions wait already); retry in "
            f"{exc.retry_after} s",
            code="rate_limit_exceeded",
            kind="rate_limit_error",
            headers={"Retry-After": str(exc.retry_after)},
        ) from None
    return jobs


async def _events(job: Job, request: Request | None = None) -> AsyncIterator[tuple]:
    """The job's events as they come; the job is cancelled if the caller goes away."""
    assert job.events is not None
    while True:
        try:
            event = await asyncio.wait_for(job.events.get(), timeout=POLL)
        except TimeoutError:
            if request is not None and await request.is_disconnected():
                job.cancelled.set()
                raise ClientGone from None
            continue
        if event[0] == "end":
            return
        if event[0] == "error":
            status = event[2] if len(event) > 2 else 500
            kind = "server_error" if status >= 500 else "invalid_request_error"
            raise ApiError(status, event[1], kind=kind, param="model" if status == 404 else None)
        yield event


async def _collect(jobs: list[Job], request: Request) -> list[dict[int, dict[str, Any]]]:
    """Each job's choices, whole: {index: {"text", "finish_reason", "tokens"}}."""
    results = []
    try:
        for job in jobs:
            choices: dict[int, dict[str, Any]] = {
                i: {"text": "", "finish_reason": None, "tokens": 0} for i in range(job.n)
            }
            async for event in _events(job, request):
                if event[0] == "done":
                    choices[event[1]].update(finish_reason=event[2], tokens=event[3])
            for event in job.log:  # the text, whole (pieces are not sent one by one)
                if event[0] == "delta":
                    choices[event[1]]["text"] += event[2]
            results.append(choices)
    except ClientGone:
        for job in jobs:
            job.cancelled.set()
        raise ApiError(499, "the client went away") from None
    except ApiError:  # one failed: the request's other completions are not wanted
        for job in jobs:
            job.cancelled.set()
        raise
    return results


def _stream(chunks: AsyncIterator[dict[str, Any]], jobs: list[Job]) -> StreamingResponse:
    async def sse() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
            yield "data: [DONE]\n\n"
        except ApiError as exc:
            yield f"data: {json.dumps(json.loads(exc.response().body))}\n\n"
        finally:  # the client went away (or all is sent): nothing more to generate
            for job in jobs:
                job.cancelled.set()

    return StreamingResponse(sse(), media_type="text/event-stream")


class _Reply:
    """Replies (whole or in chunks) in OpenAI's shapes."""

    def __init__(self, prefix: str, kind: str, model: str, formatter: Any) -> None:
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.kind, self.model, self.formatter = kind, model, formatter
        self.created = int(time.time())

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def _extras(self, text: str) -> dict[str, Any]:
        if self.formatter is None:
            return {}
        return {"adaptool": {"parsed": self.formatter.parse(text)}}

    @staticmethod
    def _usage(results: list[dict[int, dict[str, Any]]], ids: list[list[int]]) -> dict[str, int]:
        prompt = sum(len(p) for p in ids)
        completion = sum(c["tokens"] for choices in results for c in choices.values())
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def completion(self, results: list, ids: list[list[int]], n: int) -> dict[str, Any]:
        choices = []
        for p, job_choices in enumerate(results):
            for i, c in sorted(job_choices.items()):
                choice = {
                    "index": p * n + i,
                    "text": c["text"],
                    "finish_reason": c["finish_reason"],
                    "logprobs": None,
                }
                choices.append(choice | self._extras(c["text"]))
        return self._head(self.kind) | {"choices": choices, "usage": self._usage(results, ids)}

    def chat(self, results: list, ids: list[list[int]], n: int) -> dict[str, Any]:
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": c["text"]},
                "finish_reason": c["finish_reason"],
                "logprobs": None,
            }
            for i, c in sorted(results[0].items())
        ]
        return self._head(self.kind) | {"choices": choices, "usage": self._usage(results, ids)}

    async def completion_chunks(
        self, jobs: list[Job], body: CompletionRequest
    ) -> AsyncIterator[dict[str, Any]]:
        tokens = 0
        for p, job in enumerate(jobs):
            texts: dict[int, str] = {}
            async for event in _events(job):
                index = p * body.n + event[1]
                if event[0] == "delta":
                    texts[event[1]] = texts.get(event[1], "") + event[2]
                    choice = {"index": index, "text": event[2], "finish_reason": None}
                else:
                    tokens += event[3]
                    choice = {"index": index, "text": "", "finish_reason": event[2]}
                    choice |= self._extras(texts.get(event[1], ""))
                yield self._head(self.kind) | {"choices": [choice | {"logprobs": None}]}
        if body.include_usage:
            prompt = sum(len(j.prompt_ids) for j in jobs)
            usage = {"prompt_tokens": prompt, "completion_tokens": tokens}
            usage["total_tokens"] = prompt + tokens
            yield self._head(self.kind) | {"choices": [], "usage": usage}

    async def chat_chunks(
        self, jobs: list[Job], body: ChatRequest
    ) -> AsyncIterator[dict[str, Any]]:
        kind, tokens, started = "chat.completion.chunk", 0, set()
        job = jobs[0]
        async for event in _events(job):
            index = event[1]
            delta: dict[str, Any] = {}
            if index not in started:
                started.add(index)
                delta["role"] = "assistant"
            if event[0] == "delta":
                choice = {
                    "index": index,
                    "delta": delta | {"content": event[2]},
                    "finish_reason": None,
                }
            else:
                tokens += event[3]
                choice = {"index": index, "delta": delta, "finish_reason": event[2]}
            yield self._head(kind) | {"choices": [choice | {"logprobs": None}]}
        if body.include_usage:
            prompt = len(job.prompt_ids)
            usage = {"prompt_tokens": prompt, "completion_tokens": tokens}
            usage["total_tokens"] = prompt + tokens
            yield self._head(kind) | {"choices": [], "usage": usage}
