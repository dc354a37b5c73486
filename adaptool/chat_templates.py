"""Chat templates for base models that ship none: a small built-in set, chosen by name in a
recipe (``chat_template = "chatml"``), or a template file. Each is the template its family's
models use, with tools and tool calls where the family has them."""

from __future__ import annotations

import re
from pathlib import Path

from adaptool.errors import DataError

#: ChatML with tools and tool calls, as Qwen2.5 renders them (without Qwen's default system
#: prompt)
CHATML = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- elif messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == "user" or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

#: ChatML whose assistant turns are marked with ``{% generation %}`` (what the trained tokens
#: are: the reply and its end-of-turn), as training libraries mark it
CHATML_GENERATION = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

#: Zephyr's (HuggingFaceH4/zephyr-7b-beta)
ZEPHYR = (
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}"
)

BUILTIN = {"chatml": CHATML, "chatml-generation": CHATML_GENERATION, "zephyr": ZEPHYR}
GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


def resolve_template(name_or_path: str, base: Path | None = None) -> str:
    """The template text of a built-in ``name`` or of a template file (``.jinja``)."""
    if name_or_path in BUILTIN:
        return BUILTIN[name_or_path]
    try:  # a pasted template or an unknown ~user is not a file either
        path = Path(name_or_path).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        if path.is_file():
            return path.read_text(encoding="utf-8")
    except (OSError, RuntimeError, ValueError):
        pass
    shown = name_or_path if len(name_or_path) <= 80 else name_or_path[:77] + "..."
    raise DataError(
        f"chat_template = '{shown}' is neither a built-in template "
        f"({', '.join(BUILTIN)}) nor a template file."
    )


def has_generation_markers(template: str) -> bool:
    """Whether the template marks what is trained with ``{% generation %}``."""
    return GENERATION_MARKER.search(template) is not None
