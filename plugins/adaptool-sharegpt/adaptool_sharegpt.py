"""The ``sharegpt`` formatter: ShareGPT conversations rendered with the chat template.

Built on :class:`adaptool.ChatTemplateFormatter`, which renders the messages, checks that the
template's prompt is a prefix of the whole conversation, and splits off the completion: this
plugin only says how a ShareGPT row becomes messages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import adaptool
from adaptool import ChatTemplateFormatter, DataError

ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


class ShareGPT(ChatTemplateFormatter):
    """``{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]}``."""

    name = "sharegpt"
    version = "1"
    description = "ShareGPT conversations ({from, value} turns) via the chat template"

    class Options(adaptool.Options):
        conversations_column: str = "conversations"

    def columns(self) -> list[str]:
        return [self.options.conversations_column]

    def messages(self, raw: str | Mapping[str, Any]) -> list[dict[str, str]]:
        if isinstance(raw, str):
            return [{"role": "user", "content": raw}]
        turns = raw[self.options.conversations_column]
        if not isinstance(turns, list):
            raise DataError(
                f"formatter 'sharegpt' expects '{self.options.conversations_column}' to hold a "
                f"list of {{from, value}} turns, found {str(turns)[:60]!r}."
            )
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


@adaptool.hookimpl
def register_formatters(register) -> None:
    register(ShareGPT)
