"""Built-in formatters: quote-tags (the reference notebook), text, instruction, chat."""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from typing import Any

from adaptool.base import ChatOptions, ChatTemplateFormatter, Example, Formatter, Options
from adaptool.errors import DataError
from adaptool.hookspecs import hookimpl

OPEN_QUOTES = ('"', "“", "'", "‘", "«")


def _field(row: Mapping[str, Any] | str, column: str, formatter: str, *, null: bool = False) -> Any:
    if isinstance(row, str):
        return row
    try:
        value = row[column]
    except KeyError:
        raise DataError(
            f"formatter '{formatter}' needs the column '{column}', which this row lacks "
            f"(it has: {', '.join(map(str, row)) or 'nothing'})."
        ) from None
    if value is None and not null:
        raise DataError(f"column '{column}' is empty (null); formatter '{formatter}' needs it.")
    return value


def _text(row: Mapping[str, Any] | str, column: str, formatter: str) -> str:
    """A column that must hold text (a number is taken as its text); anything else — a list,
    an object — is refused rather than trained on as its Python repr."""
    value = _field(row, column, formatter)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DataError(
            f"column '{column}' holds {type(value).__name__} {str(value)[:40]!r}; formatter "
            f"'{formatter}' needs text there."
        )
    return str(value)


class QuoteTags(Formatter):
    """``“<quote>” ->: ['tag', ...]`` — the reference notebook's quote tagger."""

    name = "quote-tags"
    description = "quote -> list of tags, as in the bloom-7b1 LoRA tagger notebook"

    class Options(Options):
        quote_column: str = "quote"
        tags_column: str = "tags"
        separator: str = " ->: "

    def columns(self) -> list[str]:
        return [self.options.quote_column, self.options.tags_column]

    def format(self, row: Mapping[str, Any], tokenizer: Any) -> Example:
        tags = _field(row, self.options.tags_column, self.name)
        if not isinstance(tags, str) and not (
            isinstance(tags, list | tuple) and all(isinstance(t, str) for t in tags)
        ):
            raise DataError(
                f"column '{self.options.tags_column}' holds {str(tags)[:40]!r}; formatter "
                f"'{self.name}' needs a list of tags (strings) or text there."
            )
        # a list is rendered as the notebook does: str(list), e.g. ['books', 'humor']
        completion = tags if isinstance(tags, str) else str(list(tags))
        return Example(self.generation_prompt(row, tokenizer), completion)

    def generation_prompt(self, raw: str | Mapping[str, Any], tokenizer: Any) -> str:
        quote = _text(raw, self.options.quote_column, self.name).strip()
        if not quote.startswith(OPEN_QUOTES):
            quote = f"“{quote}”"
        return quote + self.options.separator

    def parse(self, completion: str) -> list[str] | None:
        """The tag list, when the output is a Python-style list of strings (and nothing else)."""
        try:
            value = ast.literal_eval(completion.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
        if isinstance(value, list) and all(isinstance(t, str) for t in value):
            return value
        return None

    def score(
        self, rows: Sequence[Mapping[str, Any]], outputs: Sequence[Any], tokenizer: Any
    ) -> dict[str, float]:
        """Tag precision / recall / F1 (micro, over predicted vs true tags), the share of
        outputs that parse as a tag list, that stop at EOS, and both."""
        n = max(len(outputs), 1)
        tp = fp = fn = exact = parsed_n = stopped_n = both = 0
        for row, out in zip(rows, outputs, strict=True):
            tags_value = _field(row, self.options.tags_column, self.name)
            if isinstance(tags_value, str):  # a rendered list, as in a CSV file
                tags_value = self.parse(tags_value) or [tags_value]
            truth = {str(t) for t in tags_value}
            tags = self.parse(out.output)
            predicted = set(tags or [])
            tp += len(predicted & truth)
            fp += len(predicted - truth)
            fn += len(truth - predicted)
            exact += predicted == truth
            parsed_n += tags is not None
            stopped_n += out.stopped
            both += tags is not None and out.stopped
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {
            "rows": len(outputs),
            "tag_precision": precision,
            "tag_recall": recall,
            "tag_f1": f1,
            "exact_tag_set": exact / n,
            "parses": parsed_n / n,
            "stopped_at_eos": stopped_n / n,
            "parses_and_stops": both / n,
        }


class Text(Formatter):
    """One column used as is; the whole text is trained on. With ``chunk`` (the default), the
    documents are read as one stream, EOS between them, cut into blocks of ``max_length``
    tokens: a long document is never truncated, nothing is thrown away."""

    name = "text"
    version = "2"  # 1 truncated each document to max_length
    description = "a text column used as is (no prompt; everything is trained on; chunked)"

    class Options(Options):
        column: str = "text"
        #: documents as one stream cut into max_length blocks (False: one example per
        #: document, truncated to max_length)
        chunk: bool = True

    @property
    def chunks(self) -> bool:
        return self.options.chunk

    def columns(self) -> list[str]:
        return [self.options.column]

    def format(self, row: Mapping[str, Any], tokenizer: Any) -> Example:
        return Example("", _text(row, self.options.column, self.name))

    def generation_prompt(self, raw: str | Mapping[str, Any], tokenizer: Any) -> str:
        return _text(raw, self.options.column, self.name)


class PromptCompletion(Formatter):
    """The common two-column layout: a prompt column and a completion column, used as they
    are (the completion trained on, EOS appended)."""

    name = "prompt-completion"
    description = "a prompt column and a completion column, as they are"

    class Options(Options):
        prompt_column: str = "prompt"
        completion_column: str = "completion"

    def columns(self) -> list[str]:
        return [self.options.prompt_column, self.options.completion_column]

    def format(self, row: Mapping[str, Any], tokenizer: Any) -> Example:
        return Example(
            _text(row, self.options.prompt_column, self.name),
            _text(row, self.options.completion_column, self.name),
        )

    def generation_prompt(self, raw: str | Mapping[str, Any], tokenizer: Any) -> str:
        return _text(raw, self.options.prompt_column, self.name)


ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task{with_input}. "
    "Write a response that appropriately completes the request."
)


class Instruction(Formatter):
    """Instruction / optional input / response, in the Alpaca layout."""

    name = "instruction"
    description = "instruction + optional input -> response (Alpaca layout)"

    class Options(Options):
        instruction_column: str = "instruction"
        input_column: str = "input"
        response_column: str = "output"
        preamble: bool = True

    def columns(self) -> list[str]:
        return [self.options.instruction_column, self.options.response_column]

    def format(self, row: Mapping[str, Any], tokenizer: Any) -> Example:
        response = _text(row, self.options.response_column, self.name)
        return Example(self.generation_prompt(row, tokenizer), response)

    def generation_prompt(self, raw: str | Mapping[str, Any], tokenizer: Any) -> str:
        instruction = _text(raw, self.options.instruction_column, self.name).strip()
        extra = "" if isinstance(raw, str) else str(raw.get(self.options.input_column) or "")
        extra = extra.strip()
        parts = []
        if self.options.preamble:
            with_input = ", paired with an input that provides further context" if extra else ""
            parts.append(ALPACA_PREAMBLE.format(with_input=with_input))
        parts.append(f"### Instruction:\n{instruction}")
        if extra:
            parts.append(f"### Input:\n{extra}")
        parts.append("### Response:\n")
        return "\n\n".join(parts)


class Chat(ChatTemplateFormatter):
    """A list of ``{"role", "content"}`` messages rendered with the tokenizer's chat template
    (or the ``chat_template`` option's). Every assistant turn is trained by default;
    assistant messages may carry ``tool_calls`` and ``reasoning_content``, ``tool`` messages
    the results, and a ``tools`` column the functions a conversation may call."""

    name = "chat"
    version = "2"  # 1 trained the last assistant turn only
    description = "a messages column rendered with the chat template; every assistant turn"

    class Options(ChatOptions):
        messages_column: str = "messages"
        system_prompt: str | None = None

    def columns(self) -> list[str]:
        return [self.options.messages_column]

    def messages(self, raw: Any) -> list[dict[str, Any]]:
        messages = (
            [{"role": "user", "content": raw}]
            if isinstance(raw, str)
            else _field(raw, self.options.messages_column, self.name, null=True)
        )
        if not isinstance(messages, list | tuple) or not all(_is_message(m) for m in messages):
            raise DataError(
                f"formatter 'chat' expects the column '{self.options.messages_column}' to hold "
                f"a list of {{role, content}} messages with text in both (an assistant message "
                f"with tool_calls may have no content), found {str(messages)[:80]!r}."
            )
        out = [_message(m) for m in messages]
        if self.options.system_prompt and (not out or out[0]["role"] != "system"):
            out.insert(0, {"role": "system", "content": self.options.system_prompt})
        return out

    def conversation(self, raw: str | Mapping[str, Any]) -> tuple[list[dict[str, Any]], Any]:
        messages, tools = super().conversation(raw)
        if isinstance(tools, str):  # tools stored as JSON text (as mixed schemas must be)
            tools = _json(tools, "tools")
        if tools is not None and not (
            isinstance(tools, list) and all(isinstance(t, Mapping) for t in tools)
        ):
            raise DataError(
                f"formatter 'chat' expects the column '{self.option('tools_column')}' to hold a "
                f"list of tool schemas (or that list as JSON text), found {str(tools)[:80]!r}."
            )
        return messages, tools


#: the message keys a chat template may read
MESSAGE_KEYS = ("role", "content", "tool_calls", "reasoning_content", "tool_call_id", "name")


def _is_message(m: Any) -> bool:
    if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
        return False
    calls = m.get("tool_calls")
    if calls is not None and not (
        isinstance(calls, list | tuple) and all(isinstance(c, Mapping) for c in calls)
    ):
        return False
    return isinstance(m.get("content"), str) or (calls is not None and m.get("content") is None)


def _message(m: Mapping[str, Any]) -> dict[str, Any]:
    """A message as the template reads it: keys that are None (what a dataset's columnar
    storage fills in for a key other rows have) left out, tool-call arguments as objects."""
    out = {k: m[k] for k in MESSAGE_KEYS if m.get(k) is not None}
    out.setdefault("content", "")
    if "tool_calls" in out:
        out["tool_calls"] = [_tool_call(c) for c in out["tool_calls"]]
    return out


def _tool_call(call: Mapping[str, Any]) -> dict[str, Any]:
    call = {k: v for k, v in call.items() if v is not None}
    function = call.get("function", call)
    if isinstance(function, Mapping):
        function = {k: v for k, v in function.items() if v is not None}
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            function["arguments"] = _json(arguments, "tool call arguments")
        elif isinstance(arguments, Mapping):
            function["arguments"] = {k: v for k, v in arguments.items() if v is not None}
        return {**call, "function": function} if "function" in call else function
    return call


def _json(text: str, what: str) -> Any:
    import json

    try:
        return json.loads(text)
    except ValueError as exc:
        raise DataError(f"formatter 'chat': the {what} are not valid JSON ({exc}).") from None


@hookimpl
def register_formatters(register) -> None:
    for cls in (QuoteTags, Text, PromptCompletion, Instruction, Chat):
        register(cls)
