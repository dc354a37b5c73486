"""The built-in formatters on real rows, with a real (tiny, locally trained) tokenizer."""

from __future__ import annotations

import pytest

from adaptool import DataError, Example, ModelError
from adaptool.data import check_columns, load_rows
from adaptool.encoding import IGNORE_INDEX, encode_examples
from adaptool.recipe import DataSection
from tests.helpers import DATA

NOTEBOOK_ROW = {
    "quote": "“Be yourself; everyone else is already taken.”",
    "author": "Oscar Wilde",
    "tags": [
        "be-yourself",
        "gilbert-perreira",
        "honesty",
        "inspirational",
        "misattributed-oscar-wilde",
        "quote-investigator",
    ],
}


def make(registry, name, **options):
    cls = registry.get("formatter", name)
    return cls(cls.Options(**options))


def rows(name: str, formatter: str):
    return load_rows(DataSection(source=str(DATA / name), formatter=formatter))


def test_quote_tags_reproduces_the_notebook(registry, tokenizer):
    fmt = make(registry, "quote-tags")
    example = fmt.format(NOTEBOOK_ROW, tokenizer)
    # the notebook: example["quote"] + " ->: " + str(example["tags"])
    assert example.prompt + example.completion == (
        NOTEBOOK_ROW["quote"] + " ->: " + str(NOTEBOOK_ROW["tags"])
    )
    assert example.prompt == "“Be yourself; everyone else is already taken.” ->: "
    assert fmt.parse(example.completion) == NOTEBOOK_ROW["tags"]


def test_quote_tags_builds_the_generation_prompt_from_a_raw_quote(registry, tokenizer):
    fmt = make(registry, "quote-tags")
    assert fmt.generation_prompt("Be yourself; everyone else is already taken.", tokenizer) == (
        "“Be yourself; everyone else is already taken.” ->: "
    )
    assert fmt.generation_prompt('"Already quoted"', tokenizer) == '"Already quoted" ->: '
    assert (
        fmt.generation_prompt(NOTEBOOK_ROW, tokenizer) == fmt.format(NOTEBOOK_ROW, tokenizer).prompt
    )


@pytest.mark.parametrize(
    ("output", "parsed"),
    [
        ("['a', 'b-c']", ["a", "b-c"]),
        ("  ['x']  ", ["x"]),
        ("[]", []),
        ("['training', 'teaching']\n\nA:\n\nI think", None),
        ("['a', 3]", None),
        ("__import__('os')", None),
        ("['a'", None),
    ],
)
def test_quote_tags_parse(registry, output, parsed):
    assert make(registry, "quote-tags").parse(output) == parsed


def test_quote_tags_on_the_test_file(registry, tokenizer):
    fmt = make(registry, "quote-tags")
    data = rows("quotes.jsonl", "quote-tags")
    check_columns(data, fmt, "quotes.jsonl")
    examples = [fmt.format(row, tokenizer) for row in data]
    assert examples[2] == Example("“Knowledge is power.” ->: ", "['knowledge', 'power']")


def test_quote_tags_with_renamed_columns(registry, tokenizer):
    fmt = make(registry, "quote-tags", quote_column="text", tags_column="labels", separator=" => ")
    example = fmt.format({"text": "“Hi.”", "labels": ["greeting"]}, tokenizer)
    assert example == Example("“Hi.” => ", "['greeting']")


def test_text_formatter_trains_on_everything(registry, tokenizer):
    fmt = make(registry, "text")
    data = rows("text.csv", "text")
    example = fmt.format(data[1], tokenizer)
    assert example == Example("", "Call me Ishmael.")
    [encoded] = encode_examples([example], tokenizer, max_length=64)
    # everything is trained on but the first token, which nothing precedes
    assert encoded.labels[0] == IGNORE_INDEX and IGNORE_INDEX not in encoded.labels[1:]
    assert encoded.labels[-1] == tokenizer.eos_token_id
    assert fmt.generation_prompt("Call me", tokenizer) == "Call me"


def test_instruction_formatter_with_and_without_input(registry, tokenizer):
    fmt = make(registry, "instruction")
    data = rows("instructions.jsonl", "instruction")
    plain = fmt.format(data[0], tokenizer)
    assert plain.completion == "Paris."
    assert plain.prompt.endswith("### Instruction:\nGive the capital of France.\n\n### Response:\n")
    assert "### Input" not in plain.prompt
    assert "paired with an input" not in plain.prompt
    with_input = fmt.format(data[1], tokenizer)
    assert "### Input:\nGood morning\n\n### Response:\n" in with_input.prompt
    assert "paired with an input" in with_input.prompt
    bare = make(registry, "instruction", preamble=False)
    assert (
        bare.generation_prompt("Say hi.", tokenizer)
        == "### Instruction:\nSay hi.\n\n### Response:\n"
    )


def test_instruction_formatter_without_an_input_column(registry, tokenizer):
    fmt = make(registry, "instruction", response_column="answer")
    example = fmt.format({"instruction": "Name a color.", "answer": "Blue."}, tokenizer)
    assert example.completion == "Blue." and "### Input" not in example.prompt


def test_chat_formatter_uses_the_chat_template(registry, tokenizer):
    fmt = make(registry, "chat")
    data = rows("chat.jsonl", "chat")
    example = fmt.format(data[0], tokenizer)
    assert example.prompt == "<|user|>\nHello!</s><|assistant|>\n"
    assert example.completion == "Hi, how can I help?</s>"
    # the template already ends the completion with EOS: encoding does not add a second one
    [encoded] = encode_examples([example], tokenizer, max_length=64, prompt_has_special_tokens=True)
    trained = [t for t in encoded.labels if t != IGNORE_INDEX]
    assert trained.count(tokenizer.eos_token_id) == 1 and trained[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(trained) == "Hi, how can I help?</s>"
    system = fmt.format(data[1], tokenizer)
    assert system.prompt.startswith("<|system|>\nBe brief.</s><|user|>\nWhat is 2+2?</s>")
    assert fmt.generation_prompt("Hello!", tokenizer) == example.prompt


def test_chat_formatter_adds_a_system_prompt(registry, tokenizer):
    fmt = make(registry, "chat", system_prompt="You are terse.")
    prompt = fmt.generation_prompt("Hi", tokenizer)
    assert prompt == "<|system|>\nYou are terse.</s><|user|>\nHi</s><|assistant|>\n"


def test_chat_formatter_errors(registry, tokenizer):
    fmt = make(registry, "chat")
    with pytest.raises(DataError, match=r"last message .* assistant"):
        fmt.format({"messages": [{"role": "user", "content": "hi"}]}, tokenizer)
    with pytest.raises(DataError, match="list of \\{role, content\\} messages"):
        fmt.format({"messages": "hello"}, tokenizer)
    no_template = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    no_template.chat_template = None
    with pytest.raises(ModelError, match="needs a tokenizer with a chat template"):
        fmt.format({"messages": [{"role": "assistant", "content": "x"}]}, no_template)


def test_missing_column_names_column_formatter_and_file(registry):
    fmt = make(registry, "quote-tags", tags_column="labels")
    data = rows("quotes.jsonl", "quote-tags")
    with pytest.raises(DataError) as err:
        check_columns(data, fmt, "quotes.jsonl")
    message = str(err.value)
    assert "'labels'" in message and "'quote-tags'" in message and "quotes.jsonl" in message
    assert "columns found: quote, author, tags" in message


def test_masking_puts_loss_on_the_completion_only(registry, tokenizer):
    fmt = make(registry, "quote-tags")
    example = fmt.format(NOTEBOOK_ROW, tokenizer)
    [masked] = encode_examples([example], tokenizer, max_length=256)
    n_prompt = len(tokenizer(example.prompt)["input_ids"])
    assert masked.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert masked.labels[n_prompt:] == masked.input_ids[n_prompt:]
    assert tokenizer.decode(masked.labels[n_prompt:]) == example.completion + "</s>"
    [everything] = encode_examples([example], tokenizer, max_length=256, train_on_prompt=True)
    assert everything.labels[1:] == everything.input_ids[1:]
    [cut] = encode_examples([example], tokenizer, max_length=n_prompt + 2)
    assert cut.truncated and len(cut.input_ids) == n_prompt + 2
    assert not cut.ends_with_eos(tokenizer.eos_token_id)


def test_chat_formatter_refuses_a_null_messages_cell(registry, tokenizer):
    with pytest.raises(DataError, match="list of"):
        make(registry, "chat").format({"messages": None}, tokenizer)


def test_quote_tags_score_reads_tags_rendered_as_text(registry, tokenizer):
    from adaptool.generate import Generation

    fmt = make(registry, "quote-tags")
    rows = [{"quote": "q", "tags": "['books', 'humor']"}]
    score = fmt.score(rows, [Generation("p", "['books', 'humor']", 6, True, 0.1)], tokenizer)
    assert score["tag_f1"] == 1.0 and score["exact_tag_set"] == 1.0


def test_quote_tags_score_counts_tags(registry, tokenizer):
    from adaptool.generate import Generation

    fmt = registry.get("formatter", "quote-tags")()
    rows = [
        {"quote": "q", "tags": ["a", "b"]},
        {"quote": "q", "tags": ["c"]},
        {"quote": "q", "tags": ["d"]},
    ]
    outs = [
        Generation("p", "['a', 'x']", 5, True, 0.1),
        Generation("p", "['c']", 3, True, 0.1),
        Generation("p", "['d'] and more", 9, False, 0.1),
    ]
    score = fmt.score(rows, outs, tokenizer)
    assert score["tag_precision"] == pytest.approx(2 / 3)
    assert score["tag_recall"] == pytest.approx(2 / 4)
    assert score["tag_f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert score["parses"] == pytest.approx(2 / 3)
    assert score["stopped_at_eos"] == pytest.approx(2 / 3)
    assert score["exact_tag_set"] == pytest.approx(1 / 3)


def test_prompt_completion_uses_the_two_columns_as_they_are(registry, tokenizer):
    from adaptool.testing import assert_formatter_contract

    fmt = make(registry, "prompt-completion")
    row = {"prompt": "Translate 'chat': ", "completion": "cat"}
    example = fmt.format(row, tokenizer)
    assert (example.prompt, example.completion) == ("Translate 'chat': ", "cat")
    assert fmt.generation_prompt("Translate 'chien': ", tokenizer) == "Translate 'chien': "
    assert_formatter_contract(fmt, [row, {"prompt": "2+2=", "completion": "4"}], tokenizer)
    other = make(registry, "prompt-completion", prompt_column="q", completion_column="a")
    assert other.format({"q": "Q", "a": "A"}, tokenizer).completion == "A"
    with pytest.raises(DataError, match="column 'completion' is empty"):
        fmt.format({"prompt": "x", "completion": None}, tokenizer)
