"""Conversations trained right: every assistant turn — and nothing else — in the labels,
checked token by token against the template's own rendering, on real templates (ChatML as
Qwen2.5 renders it, with tools; Zephyr's; ChatML with {% generation %} markers); tool calls
rendered and masked; last-turn and roles switches; templates that rewrite earlier turns
refused; a template from a file."""

from __future__ import annotations

import json

import pytest

from adaptool.builtin.formatters import Chat
from adaptool.chat_templates import BUILTIN, has_generation_markers, resolve_template
from adaptool.encoding import IGNORE_INDEX, encode_spans
from adaptool.errors import DataError
from adaptool.testing import make_tokenizer

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|user|>", "<|assistant|>", "<|system|>"]
CONVERSATION = [
    {"role": "system", "content": "You answer in one word."},
    {"role": "user", "content": "Colour of the sky?"},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "And of grass?"},
    {"role": "assistant", "content": "Green, mostly."},
    {"role": "user", "content": "Snow?"},
    {"role": "assistant", "content": "White!"},
]
#: template -> (the header before an assistant reply, what ends the reply)
TURNS = {
    "chatml": ("<|im_start|>assistant\n", "<|im_end|>"),
    "chatml-generation": ("<|im_start|>assistant\n", "<|im_end|>"),
    "zephyr": ("<|assistant|>\n", "</s>"),
}


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory):
    corpus = [json.dumps(CONVERSATION), "the weather in Paris is sunny"] * 20
    tok = make_tokenizer(tmp_path_factory.mktemp("chat-tok"), corpus, vocab_size=400)
    tok.add_special_tokens({"additional_special_tokens": SPECIALS})
    return tok


def chat(**options):
    return Chat(Chat.Options(**options))


def regions(text: str, header: str, end: str, contents: list[str]) -> list[tuple[int, int, int]]:
    """Where each assistant reply lies in the rendered text, found by searching for it:
    (start of the reply, end of its end-of-turn marker, that end plus a trailing newline)."""
    found, at = [], 0
    for content in contents:
        start = text.index(header + content, at) + len(header)
        stop = start + len(content) + len(end)
        assert text[start + len(content) : stop] == end
        found.append((start, stop, stop + (text[stop : stop + 1] == "\n")))
        at = stop
    return found


def check_tokens(tokenizer, example, encoded, expected):
    """Token by token: a token inside a reply (through its end marker) is trained; a token
    outside every reply is not (the newline after a marker may go either way; an EOS appended
    after the text is trained)."""
    text = example.prompt + example.completion
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)[
        "offset_mapping"
    ]
    for i, (start, end) in enumerate(offsets):
        label = encoded.labels[i]
        inside = any(a <= start and end <= b for a, b, _ in expected)
        near = any(a <= start and end <= c for a, _, c in expected)
        if inside and i > 0:
            assert label == encoded.input_ids[i], f"token {i} {text[start:end]!r} not trained"
        elif not near:
            assert label == IGNORE_INDEX, f"token {i} {text[start:end]!r} trained"
    extra = encoded.labels[len(offsets) :]
    assert extra in ([], [tokenizer.eos_token_id])


@pytest.mark.parametrize("template", sorted(TURNS))
def test_every_assistant_turn_and_nothing_else_is_trained(chat_tokenizer, template):
    tokenizer = chat_tokenizer
    example = chat(chat_template=template).format({"messages": CONVERSATION}, tokenizer)
    text = example.prompt + example.completion
    assert text == tokenizer.apply_chat_template(
        CONVERSATION, chat_template=BUILTIN[template], tokenize=False
    )
    replies = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    expected = regions(text, *TURNS[template], replies)
    assert len(example.spans) == 3
    encoded = encode_spans(example, tokenizer, max_length=512)
    check_tokens(tokenizer, example, encoded, expected)
    trained = tokenizer.decode([t for t in encoded.labels if t != IGNORE_INDEX])
    for reply in replies:
        assert reply in trained
    for other in ("Colour of the sky?", "Snow?", "one word", "<|im_start|>user"):
        assert other not in trained
    # the completion a generation prompt asks for is the last reply
    assert example.completion.startswith("White!")
    assert (
        chat(chat_template=template).generation_prompt({"messages": CONVERSATION}, tokenizer)
        == example.prompt
    )


def test_the_generation_markers_are_what_the_template_marks(chat_tokenizer):
    tokenizer = chat_tokenizer
    assert has_generation_markers(BUILTIN["chatml-generation"])
    assert not has_generation_markers(BUILTIN["chatml"])  # add_generation_prompt is no marker
    example = chat(chat_template="chatml-generation").format({"messages": CONVERSATION}, tokenizer)
    text = example.prompt + example.completion
    marked = [text[a:b] for a, b in example.spans]
    assert marked == ["Blue.<|im_end|>", "Green, mostly.<|im_end|>", "White!<|im_end|>"]


def test_last_turn_only_and_other_roles(chat_tokenizer):
    tokenizer = chat_tokenizer
    last = chat(chat_template="chatml", train_turns="last").format(
        {"messages": CONVERSATION}, tokenizer
    )
    assert len(last.spans) == 1
    text = last.prompt + last.completion
    assert text[slice(*last.spans[0])].startswith("White!")
    both = chat(chat_template="chatml", roles_to_train=["user", "assistant"]).format(
        {"messages": CONVERSATION}, tokenizer
    )
    text = both.prompt + both.completion
    trained = "".join(text[a:b] for a, b in both.spans)
    assert "Snow?" in trained and "Blue." in trained and "one word" not in trained


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
WITH_TOOLS = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "content": "sunny, 21 C"},
    {"role": "assistant", "content": "It is sunny in Paris."},
]


def test_tool_calls_render_and_only_the_assistants_are_trained(chat_tokenizer):
    tokenizer = chat_tokenizer
    row = {"messages": WITH_TOOLS, "tools": json.dumps(TOOLS)}
    example = chat(chat_template="chatml").format(row, tokenizer)
    text = example.prompt + example.completion
    assert '"name": "get_weather"' in text and '"arguments": {"city": "Paris"}' in text
    assert "<tools>" in text and "sunny, 21 C" in text
    trained = "".join(text[a:b] for a, b in example.spans)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in trained
    assert "It is sunny in Paris." in trained
    assert "sunny, 21 C" not in trained and "Weather in Paris?" not in trained
    assert "<tools>" not in trained
    encoded = encode_spans(example, tokenizer, max_length=1024)
    decoded = tokenizer.decode([t for t in encoded.labels if t != IGNORE_INDEX])
    assert "get_weather" in decoded and "sunny, 21 C" not in decoded


#: a template that shows reasoning only for the latest assistant turn, as Qwen3's drops it
#: from earlier turns: a conversation prefix no longer renders as a prefix of the whole
DROPS_PAST_REASONING = (
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n"
    "{%- if m.role == 'assistant' and m.reasoning_content and loop.last %}"
    "<think>{{ m.reasoning_content }}</think>{%- endif %}"
    "{{ m.content }}<|im_end|>\n{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


def test_a_template_that_rewrites_earlier_turns_is_refused_or_reasoning_dropped(
    tmp_path, chat_tokenizer
):
    tokenizer = chat_tokenizer
    path = tmp_path / "qwen3-like.jinja"
    path.write_text(DROPS_PAST_REASONING)
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "two and two"},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6", "reasoning_content": "three and three"},
    ]
    with pytest.raises(DataError, match="renders the conversation up to message 2 differently"):
        chat(chat_template=str(path)).format({"messages": messages}, tokenizer)
    kept = chat(chat_template=str(path), train_turns="last").format(
        {"messages": messages}, tokenizer
    )
    assert "<think>three and three</think>6" in kept.completion
    dropped = chat(chat_template=str(path), reasoning="drop").format(
        {"messages": messages}, tokenizer
    )
    assert "think" not in dropped.prompt + dropped.completion and len(dropped.spans) == 2


def test_templates_resolve_by_name_or_file_and_refuse_anything_else(tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text("{{ messages }}")
    assert resolve_template("zephyr") == BUILTIN["zephyr"]
    assert resolve_template(str(path)) == "{{ messages }}"
    with pytest.raises(DataError, match="neither a built-in template"):
        resolve_template("llama-9")


def test_a_base_without_a_template_trains_chat_with_a_builtin_one(chat_tokenizer):
    tokenizer = chat_tokenizer
    import copy

    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    example = chat(chat_template="zephyr").format({"messages": CONVERSATION[:3]}, bare)
    assert example.completion.startswith("Blue.</s>")


def test_the_options_template_and_conversation_of_a_chat_formatter(chat_tokenizer):
    tokenizer = chat_tokenizer
    formatter = chat(chat_template="zephyr", reasoning="drop")
    assert formatter.option("train_turns") == "all" and formatter.option("reasoning") == "drop"
    assert formatter.template(tokenizer) == BUILTIN["zephyr"]
    assert chat().template(tokenizer) == tokenizer.chat_template
    row = {
        "messages": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4", "reasoning_content": "adding"},
        ],
        "tools": json.dumps(TOOLS),
    }
    messages, tools = formatter.conversation(row)
    assert "reasoning_content" not in messages[1] and tools == TOOLS
    messages, _ = chat().conversation(row)
    assert messages[1]["reasoning_content"] == "adding"


def test_conversations_with_tool_calls_train_from_a_jsonl_file(tmp_path, tiny_bloom_dir, plugins):
    """Rows as a dataset stores them (columnar: keys one row has are None in the others,
    arguments kept as JSON text) check and train; each conversation trains all its replies."""
    from adaptool.check import check
    from adaptool.recipe import load_recipe
    from adaptool.training.run import train
    from tests.helpers import recipe_file

    data = tmp_path / "chats.jsonl"
    rows = [
        {"messages": CONVERSATION, "tools": None},
        {"messages": WITH_TOOLS, "tools": json.dumps(TOOLS)},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows * 4))
    path = recipe_file(tmp_path, tiny_bloom_dir, source=data, steps=2)
    text = path.read_text().replace(
        'formatter = "quote-tags"', 'formatter = "chat"\nchat_template = "chatml"'
    )
    path.write_text(text)
    path.write_text(path.read_text().replace("max_length = 96", "max_length = 1024"))
    report = check(load_recipe(path), examples=2)
    shown = ["".join(t for t, trained in view.segments if trained) for view in report.examples]
    assert "Blue." in shown[0] and "Green, mostly." in shown[0] and "White!" in shown[0]
    assert "get_weather" in shown[1] and "sunny, 21 C" not in shown[1]
    result = train(load_recipe(path))
    assert result.step == 2 and (result.output_dir / "adaptool.json").is_file()


def test_a_tokenizer_without_offsets_trains_the_same_turns(chat_tokenizer):
    """A slow (Python) tokenizer gives no character offsets: the text is cut at the span
    edges and each piece tokenized on its own — the same turns are trained."""

    class Slow:
        is_fast = False

        def __init__(self, fast):
            self.fast = fast
            self.eos_token, self.eos_token_id = fast.eos_token, fast.eos_token_id

        def __call__(self, text, add_special_tokens=True):
            return {
                "input_ids": self.fast(text, add_special_tokens=add_special_tokens)["input_ids"]
            }

    example = chat(chat_template="chatml").format({"messages": CONVERSATION}, chat_tokenizer)
    encoded = encode_spans(example, Slow(chat_tokenizer), max_length=512)
    trained = chat_tokenizer.decode([t for t in encoded.labels if t != IGNORE_INDEX])
    for reply in ("Blue.", "Green, mostly.", "White!"):
        assert reply in trained
    assert "Colour of the sky?" not in trained and "one word" not in trained


def test_a_conversation_may_open_with_the_assistant(chat_tokenizer):
    messages = [
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Bye."},
    ]
    example = chat(chat_template="chatml").format({"messages": messages}, chat_tokenizer)
    text = example.prompt + example.completion
    assert [text[a:b].split("<|im_end|>")[0].split("\n")[-1] for a, b in example.spans] == [
        "Hello!",
        "Bye.",
    ]


def test_an_unknown_chat_template_is_a_recipe_problem(tmp_path, registry):
    from adaptool.errors import RecipeError
    from adaptool.recipe import load_recipe

    path = tmp_path / "r.toml"
    path.write_text(
        '[model]\nname = "m"\n[output]\ndir = "o"\n'
        '[data]\nsource = "c.jsonl"\nformatter = "chat"\nchat_template = "llama-9"\n'
    )
    with pytest.raises(RecipeError, match="neither a built-in template"):
        load_recipe(path)


def test_a_template_file_travels_with_the_adapter(tmp_path, tiny_bloom_dir, plugins):
    """Trained with chat_template = a .jinja file: the adapter's tokenizer carries it, so
    generating later works where the file is not."""
    from adaptool.artifacts.loading import open_target
    from adaptool.recipe import load_recipe
    from adaptool.training.run import train
    from tests.helpers import recipe_file

    template = tmp_path / "mine.jinja"
    template.write_text(BUILTIN["zephyr"])
    data = tmp_path / "chats.jsonl"
    data.write_text((json.dumps({"messages": CONVERSATION[:3]}) + "\n") * 8)
    path = recipe_file(tmp_path, tiny_bloom_dir, source=data, steps=1)
    lines = f'formatter = "chat"\nchat_template = "{template}"'
    path.write_text(path.read_text().replace('formatter = "quote-tags"', lines))
    out = train(load_recipe(path)).output_dir
    template.unlink()
    target = open_target(out)
    prompt = target.formatter.generation_prompt("Colour of the sky?", target.tokenizer)
    assert prompt == "<|user|>\nColour of the sky?</s>\n<|assistant|>\n"


def test_a_template_file_is_found_beside_the_recipe(tmp_path, registry, monkeypatch):
    """chat_template = "mine.jinja" names the file next to the recipe, whatever the working
    directory; a built-in name is left as it is."""
    from adaptool.recipe import load_recipe
    from tests.helpers import write_recipe

    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "mine.jinja").write_text(BUILTIN["zephyr"])
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    text = (
        '[model]\nname = "gpt2"\n[data]\nsource = "chats.jsonl"\nformatter = "chat"\n'
        'chat_template = "{template}"\n[output]\ndir = "out"\n'
    )
    path = write_recipe(tmp_path / "recipes", text.format(template="mine.jinja"))
    recipe = load_recipe(path)
    assert recipe.data.options["chat_template"] == str(tmp_path / "recipes" / "mine.jinja")
    named = write_recipe(tmp_path / "recipes", text.format(template="zephyr"), "named.toml")
    assert load_recipe(named).data.options["chat_template"] == "zephyr"


def test_an_odd_chat_template_value_is_a_problem_not_a_crash(tmp_path, registry):
    from adaptool.errors import RecipeError
    from adaptool.recipe import load_recipe
    from tests.helpers import write_recipe

    pasted = "{% for m in messages %}" * 400  # a template pasted where a name or file goes
    for value in ("~nosuchuser/t.jinja", pasted):
        text = (
            '[model]\nname = "gpt2"\n[data]\nsource = "c.jsonl"\nformatter = "chat"\n'
            f"chat_template = '{value}'\n[output]\ndir = \"out\"\n"
        )
        with pytest.raises(RecipeError, match="chat_template"):
            load_recipe(write_recipe(tmp_path, text))
