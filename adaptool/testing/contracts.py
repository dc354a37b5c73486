"""Contract checks a plugin's own tests call: what adaptool relies on from a formatter, a PEFT
method or a quantizer, checked on real rows and a tiny real model. Each raises
``AssertionError`` with what is wrong, so a failing contract reads like a failing test.

    from adaptool.testing import assert_formatter_contract

    def test_contract(adaptool_tokenizer):
        assert_formatter_contract(ShareGPT(), ROWS, adaptool_tokenizer)
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from adaptool.base import Example, Formatter, LayerToFold, PeftMethod, Quantizer, RunInfo

#: the exceptions a formatter may raise for a row it cannot render (DataError, KeyError,
#: TypeError, ValueError, AttributeError); adaptool reports them as bad data naming the row
#: and can skip such rows (``data.on_bad_row = "skip"``)
from adaptool.encoding import ROW_ERRORS
from adaptool.registry import NAME_RE

__all__ = [
    "ROW_ERRORS",
    "assert_formatter_contract",
    "assert_method_contract",
    "assert_quantizer_contract",
]


def _plugin_basics(plugin: Any) -> None:
    cls = type(plugin)
    assert isinstance(cls.name, str) and NAME_RE.match(cls.name), (
        f"{cls.__name__}.name = {cls.name!r}: lowercase letters, digits and dashes"
    )
    cls.Options()  # every option has a default (a recipe may set none)
    assert isinstance(cls.version, str), f"{cls.__name__}.version must be a string"


def assert_formatter_contract(
    formatter: Formatter, rows: Sequence[Mapping[str, Any]], tokenizer: Any
) -> None:
    """``formatter`` on ``rows`` (at least one, each complete) with ``tokenizer``:

    - ``columns()`` names columns every row has;
    - ``format(row)`` gives an :class:`Example` of two strings, the completion not empty
      (adaptool appends EOS to it, once, whether or not the formatter wrote one);
    - ``generation_prompt(row)`` is the prompt ``format(row)`` trains with, so generation sees
      what training saw (a formatter that trains on whole texts, with an empty prompt, may
      continue the text instead); ``generation_prompt(text)`` takes a typed string too;
    - ``parse()`` of each completion is None or serialises to JSON;
    - ``score()`` returns numbers by name;
    - a row without one of its columns raises one of ``ROW_ERRORS`` (reported as bad data,
      naming the row), never anything else.
    """
    from adaptool.generate import Generation

    _plugin_basics(formatter)
    assert rows, "give at least one row"
    columns = formatter.columns()
    assert isinstance(columns, list) and all(isinstance(c, str) for c in columns), columns
    examples = []
    for number, row in enumerate(rows, 1):
        missing = [c for c in columns if c not in row]
        assert not missing, f"row {number} lacks the column(s) {missing} that columns() names"
        example = formatter.format(row, tokenizer)
        assert isinstance(example, Example), f"format() returned {type(example).__name__}"
        assert isinstance(example.prompt, str) and isinstance(example.completion, str)
        assert example.completion.strip(), f"row {number}: the completion is empty"
        prompt = formatter.generation_prompt(row, tokenizer)
        assert isinstance(prompt, str), f"generation_prompt() returned {type(prompt).__name__}"
        assert prompt == example.prompt or not example.prompt, (
            f"row {number}: generation_prompt(row) differs from the prompt format(row) trains "
            f"with:\n{prompt!r}\n!=\n{example.prompt!r}"
        )
        parsed = formatter.parse(example.completion)
        json.dumps(parsed)  # parse() results must serialise to JSON
        examples.append(example)
    assert isinstance(formatter.generation_prompt("a typed prompt", tokenizer), str)
    outputs = [
        Generation(e.prompt, e.completion, 1, True, 0.0, formatter.parse(e.completion))
        for e in examples
    ]
    scores = formatter.score(list(rows), outputs, tokenizer)
    assert isinstance(scores, dict) and scores, "score() must return a dict of numbers"
    for key, value in scores.items():
        assert isinstance(key, str) and isinstance(value, (int, float)), (key, value)
        assert math.isfinite(value), f"score {key} = {value}"
    for column in columns:
        broken = {k: v for k, v in rows[0].items() if k != column}
        try:
            formatter.format(broken, tokenizer)
        except ROW_ERRORS:
            continue
        except Exception as exc:
            raise AssertionError(
                f"a row without '{column}' raised {type(exc).__name__}; raise adaptool."
                f"DataError (or KeyError/TypeError/ValueError) for a row you cannot render"
            ) from exc


def assert_method_contract(
    method: PeftMethod, model_dir: str | Path, settings: Any = None, *, atol: float = 1e-5
) -> None:
    """``method`` on the tiny model in ``model_dir`` (``adaptool.testing.make_tiny_bloom``):
    its config wraps the model with trainable parameters; the adapter it saves is one plain
    peft loads back, with the tensors :meth:`PeftMethod.saved_shapes` announces; ``describe``
    is JSON; and — where the method is mergeable — folding every layer through
    :meth:`PeftMethod.fold` equals peft's own ``merge_and_unload`` within ``atol``."""
    import tempfile

    import torch
    from peft import PeftConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from adaptool.merging.fold import group_by_module
    from adaptool.recipe.schema import PeftSection

    _plugin_basics(method)
    settings = settings if settings is not None else PeftSection(method=method.name)
    config = method.peft_config(settings, RunInfo(total_steps=10, tokenizer=str(model_dir)))
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    reference = {k: v.detach().clone() for k, v in base.state_dict().items()}
    model = get_peft_model(copy.deepcopy(base), config)
    method.after_wrap(model, RunInfo(total_steps=10))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable, f"{method.name}: the config leaves nothing to train"
    with torch.no_grad():  # move every adapter tensor off its initial value
        generator = torch.Generator().manual_seed(0)
        for p in trainable:
            p.add_(0.05 * torch.randn(p.shape, generator=generator).to(p.dtype))
    with tempfile.TemporaryDirectory() as tmp:
        method.save(model, Path(tmp))
        PeftConfig.from_pretrained(tmp)  # plain peft loads the saved config back
        weights = load_file(f"{tmp}/adapter_model.safetensors")
        saved = {k: tuple(v.shape) for k, v in weights.items()}
    announced = method.saved_shapes(model)
    assert saved == announced, f"{method.name}: saved tensors differ from saved_shapes()"
    json.dumps(method.describe(model.peft_config["default"].to_dict()), default=str)
    if not method.mergeable:
        assert method.not_mergeable_because, f"{method.name}: say why it cannot be merged"
        return
    state = get_peft_model_state_dict(model)
    grouped, shared = group_by_module(state, method)
    merged = model.merge_and_unload().state_dict()
    for module, tensors in grouped.items():
        weight, bias = method.fold(
            LayerToFold(
                module,
                reference[f"{module}.weight"].float(),
                reference.get(f"{module}.bias"),
                tensors,
                shared,
                model.peft_config["default"],
            )
        )
        torch.testing.assert_close(weight, merged[f"{module}.weight"].float(), atol=atol, rtol=0)
        expected = merged.get(f"{module}.bias")
        if expected is not None:  # a fold that leaves the bias must leave it as merging does
            got = bias if bias is not None else reference[f"{module}.bias"]
            torch.testing.assert_close(got.float(), expected.float(), atol=atol, rtol=0)


def assert_quantizer_contract(quantizer: Quantizer, model_dir: str | Path) -> None:
    """``quantizer`` loads the tiny model in ``model_dir``; ``describe()`` is JSON naming the
    backend; ``round_trip`` keeps a weight's shape and gives float32; the layers it says it
    quantizes are layers of the model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from adaptool.modeling import load_base

    _plugin_basics(quantizer)
    kwargs = quantizer.from_pretrained_kwargs()
    assert isinstance(kwargs, dict), "from_pretrained_kwargs() must return a dict"
    described = quantizer.describe()
    json.dumps(described)
    assert described.get("backend") == quantizer.name, described
    model = load_base(str(model_dir), quantizer, dtype="float32")
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all(), "the quantized model computes non-finite logits"
    weight = torch.randn(64, 64)
    rounded = quantizer.round_trip(weight, dtype=torch.float32)
    assert rounded.shape == weight.shape and rounded.dtype == torch.float32
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(model_dir)))
    names = {n for n, _ in meta.named_modules()}
    unknown = sorted(quantizer.quantized_layers(meta) - names)
    assert not unknown, f"quantized_layers() names layers the model does not have: {unknown[:3]}"
