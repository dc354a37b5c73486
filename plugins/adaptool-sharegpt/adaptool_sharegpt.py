"""The ``sharegpt`` formatter: ShareGPT conversations rendered with the chat template."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import adaptool
from adaptool import DataError, Example, Formatter, ModelError

ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


class ShareGPT(Formatter):
    """``{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]}``."""

    name = "sharegpt"
    version = "1"
    description = "ShareGPT conversations ({from, value} turns) via the chat template"
    prompt_has_special_tokens = True

    class Options(adaptool.Options):
        conversations_column: str = "conversations"

    def columns(self) -> list[str]:
        return [self.options.conversations_column]

    def _messages(self, raw: str | Mapping[str, Any]) -> list[dict[str, str]]:
        if isinstance(raw, str):
            return [{"role": "user", "content": raw}]
        turns = raw[self.options.conversations_column]
        messages = []
        for turn in turns:
            role = ROLES.get(str(turn.get("from", "")).lower())
            if role is None:
                raise DataError(
                    f"formatter 'sharegpt': unknown speaker {turn.get('from')!r} (expected one "
                    f"of {', '.join(ROLES)})."
                )
            messages.append({"role": role, "content": str(turn.get("value", ""))})
        return messages

    @staticmethod
    def _render(tokenizer: Any, messages: list[dict[str, str]], prompt: bool) -> str:
        if not getattr(tokenizer, "chat_template", None):
            raise ModelError("formatter 'sharegpt' needs a tokenizer with a chat template.")
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)

    def format(self, row: Mapping[str, Any], tokenizer: Any) -> Example:
        messages = self._messages(row)
        if not messages or messages[-1]["role"] != "assistant":
            raise DataError("formatter 'sharegpt' needs every conversation to end with a gpt turn.")
        prompt = self._render(tokenizer, messages[:-1], True)
        full = self._render(tokenizer, messages, False)
        return Example(prompt, full[len(prompt) :])

    def generation_prompt(self, raw: str | Mapping[str, Any], tokenizer: Any) -> str:
        messages = self._messages(raw)
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        return self._render(tokenizer, messages, True)


@adaptool.hookimpl
def register_formatters(register) -> None:
    register(ShareGPT)
