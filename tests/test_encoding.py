"""encode_examples: EOS appended once, the prompt masked (unless train_on_prompt), the first
label never trained, truncation, prompts that carry their own special tokens; and Encoded's
trained_tokens / ends_with_eos."""

from __future__ import annotations

import re
import shutil

import pytest

from adaptool.base import Example
from adaptool.encoding import IGNORE_INDEX, Encoded, encode_examples

PROMPT = "“Knowledge is power.” ->: "
COMPLETION = "['knowledge', 'power']"


class CharTokenizer:
    """One id per character (ord + 10); BOS (1) in front when special tokens are added; EOS
    is "</s>" (2). Records the add_special_tokens of every call."""

    eos_token = "</s>"
    bos_token_id = 1

    def __init__(self, eos: bool = True) -> None:
        self.eos_token_id = 2 if eos else None
        self.calls: list[tuple[list[str], bool]] = []

    def ids(self, text: str) -> list[int]:
        out, rest = [], text
        while rest:
            if self.eos_token_id is not None and rest.startswith(self.eos_token):
                out.append(self.eos_token_id)
                rest = rest[len(self.eos_token) :]
            else:
                out.append(ord(rest[0]) + 10)
                rest = rest[1:]
        return out

    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> dict:
        self.calls.append((list(texts), add_special_tokens))
        bos = [self.bos_token_id] if add_special_tokens else []
        return {"input_ids": [bos + self.ids(t) for t in texts]}


def test_eos_is_appended_to_the_completion(tokenizer):
    [enc] = encode_examples([Example(PROMPT, COMPLETION)], tokenizer, max_length=256)
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    completion_ids = tokenizer(COMPLETION, add_special_tokens=False)["input_ids"]
    assert enc.input_ids == prompt_ids + completion_ids + [tokenizer.eos_token_id]
    assert enc.prompt_tokens == len(prompt_ids)
    assert enc.completion_tokens == len(completion_ids) + 1
    assert enc.ends_with_eos(tokenizer.eos_token_id)
    assert not enc.truncated


def test_eos_is_not_doubled_when_the_completion_already_ends_with_it(tokenizer):
    [plain, with_eos] = encode_examples(
        [Example(PROMPT, COMPLETION), Example(PROMPT, COMPLETION + tokenizer.eos_token)],
        tokenizer,
        max_length=256,
    )
    assert with_eos.input_ids == plain.input_ids
    assert with_eos.labels == plain.labels
    assert with_eos.input_ids.count(tokenizer.eos_token_id) == 1


def test_an_empty_completion_still_trains_eos(tokenizer):
    [enc] = encode_examples([Example(PROMPT, "")], tokenizer, max_length=256)
    assert enc.completion_tokens == 1
    assert enc.input_ids[-1] == tokenizer.eos_token_id
    assert enc.trained_tokens == 1
    assert enc.ends_with_eos(tokenizer.eos_token_id)


def test_the_prompt_is_masked(tokenizer):
    [enc] = encode_examples([Example(PROMPT, COMPLETION)], tokenizer, max_length=256)
    n = enc.prompt_tokens
    assert n > 1
    assert enc.labels[:n] == [IGNORE_INDEX] * n
    assert enc.labels[n:] == enc.input_ids[n:]
    assert enc.trained_tokens == enc.completion_tokens


def test_train_on_prompt_trains_every_token_but_the_first(tokenizer):
    [enc] = encode_examples(
        [Example(PROMPT, COMPLETION)], tokenizer, max_length=256, train_on_prompt=True
    )
    assert enc.labels[0] == IGNORE_INDEX
    assert enc.labels[1:] == enc.input_ids[1:]
    assert enc.trained_tokens == len(enc.input_ids) - 1


def test_the_first_label_is_never_trained_even_without_a_prompt():
    tok = CharTokenizer()
    for train_on_prompt in (False, True):
        [enc] = encode_examples(
            [Example("", "ab")],
            tok,
            max_length=16,
            train_on_prompt=train_on_prompt,
            prompt_has_special_tokens=True,  # no BOS: the completion's "a" comes first
        )
        assert enc.input_ids == [ord("a") + 10, ord("b") + 10, 2]
        assert enc.labels == [IGNORE_INDEX, ord("b") + 10, 2]


def test_truncation_cuts_to_max_length_and_says_so(tokenizer):
    [full] = encode_examples([Example(PROMPT, COMPLETION)], tokenizer, max_length=256)
    cut = len(full.input_ids) - 3
    [enc] = encode_examples([Example(PROMPT, COMPLETION)], tokenizer, max_length=cut)
    assert enc.truncated
    assert enc.input_ids == full.input_ids[:cut]
    assert enc.labels == full.labels[:cut]
    # the counts say what the example had before truncation
    assert (enc.prompt_tokens, enc.completion_tokens) == (
        full.prompt_tokens,
        full.completion_tokens,
    )
    assert not enc.ends_with_eos(tokenizer.eos_token_id)  # EOS was cut off


def test_exactly_max_length_is_not_truncated(tokenizer):
    [full] = encode_examples([Example(PROMPT, COMPLETION)], tokenizer, max_length=256)
    [enc] = encode_examples(
        [Example(PROMPT, COMPLETION)], tokenizer, max_length=len(full.input_ids)
    )
    assert not enc.truncated
    assert enc == full


def test_a_prompt_with_its_own_special_tokens_is_encoded_without_adding_them():
    default, own = CharTokenizer(), CharTokenizer()
    p, c = ord("p") + 10, ord("c") + 10
    [added] = encode_examples([Example("p", "c")], default, max_length=16)
    [kept] = encode_examples(
        [Example("p", "c")], own, max_length=16, prompt_has_special_tokens=True
    )
    assert added.input_ids == [default.bos_token_id, p, c, 2]
    assert kept.input_ids == [p, c, 2]
    # the completion never gets special tokens, either way
    assert default.calls == [(["p"], True), (["c"], False)]
    assert own.calls == [(["p"], False), (["c"], False)]


def test_without_an_eos_token_nothing_is_appended():
    tok = CharTokenizer(eos=False)
    [enc] = encode_examples([Example("p", "cd")], tok, max_length=16)
    assert enc.input_ids == [1, ord("p") + 10, ord("c") + 10, ord("d") + 10]
    assert enc.completion_tokens == 2
    assert not enc.ends_with_eos(tok.eos_token_id)


def test_examples_are_encoded_in_order(tokenizer):
    examples = [Example(PROMPT, COMPLETION), Example("“Hi” ->: ", "[]")]
    encoded = encode_examples(examples, tokenizer, max_length=256)
    assert [e.input_ids for e in encoded] == [
        encode_examples([ex], tokenizer, max_length=256)[0].input_ids for ex in examples
    ]


@pytest.mark.parametrize(
    ("labels", "eos", "trained", "ends"),
    [
        ([IGNORE_INDEX, IGNORE_INDEX, 7, 2], 2, 2, True),
        ([IGNORE_INDEX, 7, 2, IGNORE_INDEX], 2, 2, True),  # the last trained one counts
        ([IGNORE_INDEX, 2, 7], 2, 2, False),
        ([IGNORE_INDEX, 7, 2], None, 2, False),
        ([IGNORE_INDEX, IGNORE_INDEX], 2, 0, False),
    ],
)
def test_encoded_trained_tokens_and_ends_with_eos(labels, eos, trained, ends):
    enc = Encoded(
        input_ids=[0] * len(labels),
        labels=labels,
        prompt_tokens=1,
        completion_tokens=len(labels) - 1,
        truncated=False,
    )
    assert enc.trained_tokens == trained
    assert enc.ends_with_eos(eos) is ends


FAILING = """
import adaptool


class Picky(adaptool.Formatter):
    name = "picky"

    def columns(self):
        return ["quote"]

    def format(self, row, tokenizer):
        if row["quote"] == "three":
            return adaptool.Example("Q: ", row["missing"])  # a KeyError on one row
        if row["quote"] == "four":
            return 1 / 0  # a plain bug
        return adaptool.Example("Q: ", row["quote"])


@adaptool.hookimpl
def register_formatters(register):
    register(Picky)
"""


def test_a_plugins_format_error_names_the_plugin_its_package_and_the_row(
    tmp_path, monkeypatch, tiny_bloom_dir
):
    import json

    from adaptool.plugins import load_plugins, use_plugins
    from adaptool.testing import install_fake_plugin
    from tests.helpers import cli, recipe_file

    site = install_fake_plugin(
        tmp_path / "site", distribution="adaptool-picky", module="picky", source=FAILING
    )
    monkeypatch.syspath_prepend(str(site))
    plugins = load_plugins(strict=True, disabled=[])
    use_plugins(plugins)
    data = tmp_path / "rows.jsonl"
    recipe = recipe_file(tmp_path, tiny_bloom_dir, source=data)
    recipe.write_text(recipe.read_text().replace('"quote-tags"', '"picky"'))
    for last, expected in (
        (
            "three",
            "row 3 of .*: formatter 'picky' \\(adaptool-picky 1.0\\) raised KeyError: 'missing'",
        ),
        (
            "four",
            "formatter 'picky' \\(adaptool-picky 1.0\\) failed on row 4 of .*ZeroDivisionError",
        ),
    ):
        rows = ["one", "two", "three" if last == "three" else "fine", last]
        data.write_text("".join(json.dumps({"quote": q, "tags": []}) + "\n" for q in rows))
        result = cli(plugins, "check", recipe)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        assert re.search(expected, " ".join(result.output.split())), result.output


def test_adaptools_own_error_in_format_passes_through_as_itself(tmp_path, tiny_bloom_dir, plugins):
    """The chat formatter with a tokenizer that has no chat template: a setup problem (a
    ModelError saying what to do), not a bug in the formatter."""
    import json

    from tests.helpers import cli, recipe_file

    data = tmp_path / "chats.jsonl"
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    data.write_text((json.dumps(row) + "\n") * 8)
    base = tmp_path / "no-template"
    shutil.copytree(tiny_bloom_dir, base)
    config = json.loads((base / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    (base / "chat_template.jinja").unlink(missing_ok=True)
    recipe = recipe_file(tmp_path, base, source=data)
    recipe.write_text(recipe.read_text().replace('"quote-tags"', '"chat"'))
    result = cli(plugins, "check", recipe)
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "needs a tokenizer with a chat template" in text and "bug" not in text


def test_chunked_text_keeps_every_token(tmp_path, tokenizer):
    """Pretraining text: the documents as one stream, EOS after each, cut into max_length
    blocks — a document longer than a block spans blocks instead of being cut; every token of
    every document is in exactly one block, in order; everything is trained but each block's
    first token (nothing in the block precedes it)."""
    from adaptool.builtin.formatters import Text
    from adaptool.encoding import encode_rows
    from adaptool.recipe.schema import DataSection

    documents = [
        "A short one.",
        " ".join(f"word{i}" for i in range(120)),  # longer than a block
        "Another short document, the last.",
    ]
    data = DataSection(source="docs.jsonl", formatter="text", max_length=32)
    encoded, bad = encode_rows([{"text": d} for d in documents], Text(), tokenizer, data)
    assert not bad
    eos = tokenizer.eos_token_id
    expected = []
    for document in documents:
        expected += tokenizer(document)["input_ids"] + [eos]
    assert [t for block in encoded for t in block.input_ids] == expected
    assert all(len(b.input_ids) == 32 for b in encoded[:-1]) and len(encoded[-1].input_ids) > 0
    assert len(encoded) == -(-len(expected) // 32)
    for block in encoded:
        assert block.labels == [IGNORE_INDEX, *block.input_ids[1:]] and not block.truncated
    one_each, _ = encode_rows(
        [{"text": d} for d in documents], Text(Text.Options(chunk=False)), tokenizer, data
    )
    assert len(one_each) == 3 and one_each[1].truncated  # the old way cuts the long one


def test_token_ids_are_what_the_tokenizer_gives(tokenizer):
    from adaptool.encoding import token_ids

    texts = ["“Knowledge is power.” ->: ", "a", "", "['x', 'y']</s>", "Be yourself."]
    for special in (True, False):
        expected = tokenizer(texts, add_special_tokens=special)["input_ids"]
        assert token_ids(tokenizer, texts, add_special_tokens=special) == expected


def test_a_tokenizer_that_rewrites_its_input_in_python_is_called_the_ordinary_way(tokenizer):
    """The Rust encoder is only trusted where it gives what the tokenizer's own call gives."""
    import copy

    from adaptool.encoding import token_ids

    class Shouting(type(tokenizer)):
        def __call__(self, text, **kw):
            upper = [t.upper() for t in text] if isinstance(text, list) else text.upper()
            return super().__call__(upper, **kw)

    shouting = copy.copy(tokenizer)
    shouting.__class__ = Shouting
    texts = ["quiet words", "more quiet words", "and more", "the end"]
    assert (
        token_ids(shouting, texts, add_special_tokens=False)
        == tokenizer([t.upper() for t in texts], add_special_tokens=False)["input_ids"]
    )


def test_a_truncation_stored_in_the_tokenizer_never_cuts_the_rust_path(tokenizer):
    """A tokenizer.json saved with truncation on: the call switches it off, and so does
    token_ids — it goes the ordinary way."""
    import copy

    from adaptool.encoding import token_ids

    stored = copy.deepcopy(tokenizer)
    stored.backend_tokenizer.enable_truncation(3)
    texts = ["a", "b", "a much longer text than three tokens, in the middle", "c", "d"]
    assert (
        token_ids(stored, texts, add_special_tokens=False)
        == tokenizer(texts, add_special_tokens=False)["input_ids"]
    )
