"""The server over HTTP, driven by OpenAI's own Python client (and httpx where the client
hides the raw reply): two adapters on one base answer as `adaptool generate` answers for each,
the base's name gives the base, streaming gives what the whole reply gives, requests that
wait together are batched (adapters mixed) and each still gets its own adapter's answer, and
bad requests get OpenAI-shaped errors with the right status."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx
import pytest

from adaptool.generate import generate
from adaptool.plugins import load_plugins, use_plugins
from adaptool.serving.server import open_engine, running
from tests.helpers import trained

KEY = "sk-test-key-4242"
QUOTE = "Be yourself; everyone else is already taken."
PROMPT = f"“{QUOTE}” ->:"
TOKENS = 12


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_bloom_dir):
    use_plugins(load_plugins(entry_points=False, strict=False, disabled=[]))
    work = tmp_path_factory.mktemp("served")
    a = trained(work, tiny_bloom_dir, name="a")
    b = trained(work, tiny_bloom_dir, name="b", extra=("training.seed=99", "training.max_steps=9"))
    return a, b


@pytest.fixture(scope="module")
def server(adapters):
    a, b = adapters
    engine = open_engine([("a", str(a)), ("b", str(b))], max_batch=8, max_queue=32)
    with running(engine, api_key=KEY) as url:
        yield engine, url


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server[1] + "/v1", api_key=KEY, max_retries=0)


def alone(adapter, prompt=PROMPT, tokens=TOKENS, **kwargs):
    """What `adaptool generate --raw` gives for ``prompt`` (greedy)."""
    from adaptool.artifacts.loading import open_target

    target = open_target(adapter)
    return generate(target.model, target.tokenizer, [prompt], max_new_tokens=tokens, **kwargs)[0]


def base_alone(base, prompt=PROMPT, tokens=TOKENS):
    from adaptool.modeling import load_base, load_tokenizer
    from adaptool.plugins import registry

    model = load_base(str(base), registry().create("quantizer", "none", {})).eval()
    return generate(model, load_tokenizer(str(base)), [prompt], max_new_tokens=tokens)[0]


def test_two_adapters_answer_as_generate_does_and_the_base_as_the_base(
    client, adapters, tiny_bloom_dir
):
    answers = {}
    for name in ("a", "b", "tiny-bloom0"):
        reply = client.completions.create(
            model=name, prompt=PROMPT, max_tokens=TOKENS, temperature=0
        )
        answers[name] = reply.choices[0].text
        assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
        assert reply.choices[0].finish_reason in ("stop", "length")
    a, b = adapters
    assert answers["a"] == alone(a).output
    assert answers["b"] == alone(b).output
    assert answers["a"] != answers["b"]
    assert answers["tiny-bloom0"] == base_alone(tiny_bloom_dir).output


def test_streaming_delivers_the_text_of_the_whole_reply(client):
    whole = client.completions.create(model="b", prompt=PROMPT, max_tokens=TOKENS, temperature=0)
    chunks = client.completions.create(
        model="b", prompt=PROMPT, max_tokens=TOKENS, temperature=0, stream=True
    )
    pieces, reasons = [], []
    for chunk in chunks:
        for choice in chunk.choices:
            pieces.append(choice.text)
            reasons.append(choice.finish_reason)
    assert len(pieces) > 2 and "".join(pieces) == whole.choices[0].text
    assert reasons[-1] == whole.choices[0].finish_reason
    chat = client.chat.completions.create(
        model="a",
        messages=[{"role": "user", "content": "tags?"}],
        max_tokens=TOKENS,
        temperature=0,
    )
    streamed = client.chat.completions.create(
        model="a",
        messages=[{"role": "user", "content": "tags?"}],
        max_tokens=TOKENS,
        temperature=0,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == chat.choices[0].message.content


def test_a_chat_is_the_template_rendered_and_continued(client, adapters):
    from adaptool.modeling import load_tokenizer

    messages = [{"role": "user", "content": "Tag this: be yourself."}]
    reply = client.chat.completions.create(
        model="a", messages=messages, max_tokens=TOKENS, temperature=0
    )
    tokenizer = load_tokenizer(str(adapters[0]))
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    expected = alone(adapters[0], prompt, add_special_tokens=False)
    assert reply.choices[0].message.content == expected.output
    assert reply.choices[0].message.role == "assistant"


def test_concurrent_requests_are_batched_and_each_gets_its_own_adapters_answer(
    client, server, adapters
):
    engine = server[0]
    expected = {name: alone(path).output for name, path in zip("ab", adapters, strict=True)}
    before = engine.stats.mixed_batches, engine.stats.batches
    names = ["a", "b", "a", "b", "b", "a"]

    def ask(name):
        reply = client.completions.create(
            model=name, prompt=PROMPT, max_tokens=TOKENS, temperature=0
        )
        return reply.choices[0].text

    # a long request holds the worker, so the six arrive while it runs and wait together
    with ThreadPoolExecutor(8) as pool:
        hold = pool.submit(
            client.completions.create, model="a", prompt=PROMPT, max_tokens=400, temperature=0
        )
        time.sleep(0.3)
        answers = list(pool.map(ask, names))
        hold.result()
    assert answers == [expected[n] for n in names]
    assert engine.stats.mixed_batches > before[0]
    assert engine.stats.batches - before[1] < len(names) + 1  # fewer batches than requests
    assert engine.stats.largest_batch >= 2


def test_a_row_is_formatted_by_the_adapters_formatter_and_the_answer_parsed(client, adapters):
    reply = client.completions.create(
        model="a",
        prompt="",
        max_tokens=TOKENS,
        temperature=0,
        extra_body={"adaptool": {"row": {"quote": QUOTE}}},
    )
    from adaptool.artifacts.loading import open_target

    target = open_target(adapters[0])
    prompt = target.formatter.generation_prompt({"quote": QUOTE}, target.tokenizer)
    expected = generate(
        target.model, target.tokenizer, [prompt], max_new_tokens=TOKENS, formatter=target.formatter
    )[0]
    choice = reply.choices[0]
    assert choice.text == expected.output
    assert choice.model_extra["adaptool"] == {"parsed": expected.parsed}


def test_sampling_follows_seed_n_and_stop(client):
    kwargs = {"model": "a", "prompt": PROMPT, "max_tokens": 20, "temperature": 1.5}
    one = client.completions.create(**kwargs, seed=3, n=3)
    again = client.completions.create(**kwargs, seed=3, n=3)
    assert [c.text for c in one.choices] == [c.text for c in again.choices]
    assert [c.index for c in one.choices] == [0, 1, 2]
    assert len({c.text for c in one.choices}) > 1  # each choice its own draw
    whole = client.completions.create(model="a", prompt=PROMPT, max_tokens=20, temperature=0)
    text = whole.choices[0].text
    stop = text[3:5] if len(text) >= 5 else None
    if stop:
        cut = client.completions.create(
            model="a", prompt=PROMPT, max_tokens=20, temperature=0, stop=[stop]
        )
        assert cut.choices[0].text == text[: text.index(stop)]
        assert cut.choices[0].finish_reason == "stop"


def test_models_lists_the_base_and_the_adapters_with_their_manifests(client):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"tiny-bloom0", "a", "b"}
    assert models["tiny-bloom0"].model_extra["adaptool"]["kind"] == "base"
    a = models["a"].model_extra["adaptool"]
    assert a["method"] == "lora" and a["formatter"] == "quote-tags" and a["steps"] == 6


def test_bad_requests_get_openai_shaped_errors_with_the_right_status(server, client):
    import openai

    url = server[1]
    with pytest.raises(openai.BadRequestError) as unknown:
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    assert unknown.value.code == "model_not_found" and "nope" in unknown.value.message
    with pytest.raises(openai.BadRequestError) as hot:
        client.completions.create(model="a", prompt="x", max_tokens=2, temperature=9)
    assert hot.value.param == "temperature"
    from openai import OpenAI

    wrong = OpenAI(base_url=url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.completions.create(model="a", prompt="x", max_tokens=2)
    bare = httpx.post(url + "/v1/completions", json={"model": "a", "prompt": "x"})
    assert bare.status_code == 401
    # the key is checked first: a bad body without it says nothing of the body
    assert httpx.post(url + "/v1/completions", json={"temperature": 9}).status_code == 401
    error = bare.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and KEY not in bare.text
    with pytest.raises(openai.APIStatusError) as long:
        client.completions.create(model="a", prompt="word " * 5000, max_tokens=2)
    assert long.value.status_code == 413
    engine = server[0]
    with pytest.raises(openai.BadRequestError) as beyond:  # prompt + max_tokens past the context
        client.completions.create(model="a", prompt="x", max_tokens=engine.context)
    assert beyond.value.code == "context_length_exceeded" and beyond.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as many:
        client.completions.create(model="a", prompt="x", max_tokens=2, n=engine.max_queue + 1)
    assert many.value.param == "n"
    broken = httpx.post(
        url + "/v1/completions",
        content=b"{not json",
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert broken.status_code == 400 and "Traceback" not in broken.text
    assert broken.json()["error"]["message"]


def test_past_the_queue_a_request_gets_429_with_retry_after(server, client):
    engine = server[0]
    engine.max_batch, engine.max_queue = 1, 1
    try:
        with ThreadPoolExecutor(2) as pool:
            hold = pool.submit(
                client.completions.create,
                model="a",
                prompt=PROMPT,
                max_tokens=600,
                temperature=0,
            )
            deadline = time.monotonic() + 10
            while engine.stats.requests == 0 or engine.queue_depth() or not _busy(engine):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            waiting = pool.submit(client.completions.create, model="b", prompt=PROMPT, max_tokens=2)
            while engine.queue_depth() == 0 and not waiting.done():
                time.sleep(0.01)
            refused = httpx.post(
                server[1] + "/v1/completions",
                json={"model": "a", "prompt": PROMPT, "max_tokens": 2},
                headers={"Authorization": f"Bearer {KEY}"},
            )
            hold.result()
            waiting.result()
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["type"] == "rate_limit_error"
    finally:
        engine.max_batch, engine.max_queue = 8, 32


def _busy(engine) -> bool:
    return engine.running > 0  # rows being generated


def test_adapters_load_and_unload_while_running_behind_the_key(
    server, client, adapters, tmp_path, tiny_llama_dir, registry
):
    url, auth = server[1], {"Authorization": f"Bearer {KEY}"}
    added = httpx.post(
        url + "/v1/adapters", json={"name": "a2", "path": str(adapters[0])}, headers=auth
    )
    assert added.status_code == 200, added.text
    reply = client.completions.create(model="a2", prompt=PROMPT, max_tokens=TOKENS, temperature=0)
    assert reply.choices[0].text == alone(adapters[0]).output
    assert (
        httpx.post(url + "/v1/adapters", json={"name": "x", "path": str(adapters[0])}).status_code
        == 401
    )
    gone = httpx.delete(url + "/v1/adapters/a2", headers=auth)
    assert gone.status_code == 200 and gone.json()["deleted"] is True
    assert "a2" not in {m.id for m in client.models.list().data}
    other = trained(tmp_path, tiny_llama_dir, name="llama")
    refused = httpx.post(url + "/v1/adapters", json={"name": "l", "path": str(other)}, headers=auth)
    assert refused.status_code == 400
    assert "trained on" in refused.json()["error"]["message"]


def test_health_metrics_and_the_page(server):
    url = server[1]
    health = httpx.get(url + "/health").json()
    assert health == {"status": "ok", "adapters": 2}  # the names need the key
    metrics = httpx.get(url + "/metrics").json()
    assert {"requests", "tokens_per_s", "queue_depth", "batches"} <= set(metrics)
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "adaptool playground" in page.text
    curve = httpx.get(
        url + "/v1/adapters/a/metrics", headers={"Authorization": f"Bearer {KEY}"}
    ).json()
    assert any("loss" in r for r in curve["records"])


def test_a_client_that_goes_away_frees_its_rows(server):
    engine = server[0]
    url, auth = server[1], {"Authorization": f"Bearer {KEY}"}
    body = {"model": "a", "prompt": PROMPT, "max_tokens": 3000, "temperature": 0, "stream": True}
    before = engine.stats.tokens
    with httpx.stream("POST", url + "/v1/completions", json=body, headers=auth) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["text"]:
                break  # one piece of text, then hang up
    deadline = time.monotonic() + 30
    while _busy(engine) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _busy(engine)
    assert engine.stats.tokens - before < 3000  # stopped long before its budget
