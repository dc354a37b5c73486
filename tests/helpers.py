"""Helpers the tests share: recipes, trained adapters, logits, the Hub CLI."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from adaptool.cli import build_app
from adaptool.recipe import load_recipe
from adaptool.training.progress import Reporter
from adaptool.training.run import train

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent


def corpus() -> list[str]:
    texts = []
    for name in ("quotes.jsonl", "instructions.jsonl", "chat.jsonl"):
        for line in (DATA / name).read_text(encoding="utf-8").splitlines():
            texts.append(json.dumps(json.loads(line), ensure_ascii=False))
    texts.append((DATA / "text.csv").read_text(encoding="utf-8"))
    return texts * 4


def write_recipe(directory: Path, text: str, name: str = "recipe.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def recipe_file(tmp_path, base, *, backend="none", steps=12, extra="", source=None, name="r.toml"):
    text = f"""
[model]
name = "{base}"
dtype = "float32"

[quantization]
backend = "{backend}"
{"compute_dtype = 'float32'" if backend == "bnb-4bit" else ""}

[peft]
r = 8
alpha = 16
dropout = 0.1
target_modules = "all-linear"

[data]
source = "{source or DATA / "quotes.jsonl"}"
formatter = "quote-tags"
eval_fraction = 0.25
max_length = 96

[training]
batch_size = 2
gradient_accumulation_steps = 2
learning_rate = 3e-2
warmup_steps = 2
max_steps = {steps}
logging_steps = 1
save_steps = 4
seed = 7
{extra}

[output]
dir = "out"
"""
    return write_recipe(tmp_path, text, name)


def run(tmp_path, base, *, overrides=(), **kw):
    path = recipe_file(tmp_path, base, **kw)
    return train(load_recipe(path, list(overrides)))


def records(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


class InterruptAt(Reporter):
    """Sends this process a real SIGINT (Ctrl-C) once step ``at`` is logged."""

    def __init__(self, at):
        self.at = at

    def log(self, record):
        if record["step"] == self.at and "loss" in record:
            os.kill(os.getpid(), signal.SIGINT)


IDS = torch.tensor([[5, 17, 33, 9, 100, 41, 7, 250]])


def trained(tmp_path, base, *, backend="none", extra=(), name="a"):
    path = recipe_file(tmp_path, base, backend=backend, steps=6, name=f"{name}.toml")
    overrides = [f"output.dir={tmp_path / name}", *extra]
    return train(load_recipe(path, overrides)).output_dir


def logits_of(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


def adapter_logits(adapter, base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    return logits_of(PeftModel.from_pretrained(model, str(adapter)).eval())


def merged_logits(folder):
    from transformers import AutoModelForCausalLM

    return logits_of(AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32))


def weight_deltas(merged_dir, base_dir):
    merged, base = (
        load_file(str(merged_dir / "model.safetensors")),
        load_file(str(base_dir / "model.safetensors")),
    )
    return {k: merged[k].float() - base[k].float() for k in merged if k.endswith(".weight")}


GOOD, OTHER = "hf_alice_secret_token", "hf_bob_secret_token"


PROMPT = "Knowledge is power."


def cli(plugins, *args):
    return CliRunner().invoke(build_app(plugins), [str(a) for a in args])


def local_files(folder: Path) -> dict[str, bytes]:
    """The files of ``folder`` and their bytes (adaptool's hidden marker aside)."""
    return {
        p.name: p.read_bytes()
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".")
    }


def generated(plugins, target) -> str:
    result = cli(plugins, "generate", target, PROMPT, "--json", "--max-new-tokens", "6")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["output"]


def recipe_text(model: str, source: str, formatter: str = "quote-tags", extra: str = "") -> str:
    return f"""
[model]
name = "{model}"

[data]
source = "{source}"
formatter = "{formatter}"
max_length = 64
eval_fraction = 0.25
{extra}

[output]
dir = "out"
"""


QUOTES = [
    "Be yourself.",
    "Knowledge is power.",
    "A journey of a thousand miles begins with one.",
    "Brevity.",
    "Well done is better than well said, they say, and so it is.",
]


def make(registry, kind, name, **options):
    """An instance of the registered plugin ``name`` of ``kind`` with ``options``."""
    cls = registry.get(kind, name)
    return cls(cls.Options(**options))


def load(tiny_bloom_dir, quantizer):
    """The tiny BLOOM loaded in fp32 through ``quantizer``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(tiny_bloom_dir), dtype=torch.float32, **quantizer.from_pretrained_kwargs()
    )
    return quantizer.after_load(model)


def method_recipe(tmp_path, base, method, peft_lines, *, backend="none", steps=6, extra=""):
    """A recipe training the PEFT ``method`` (its ``[peft]`` lines given) on ``base``."""
    quant = "compute_dtype = 'float32'" if backend == "bnb-4bit" else ""
    text = f"""
[model]
name = "{base}"
dtype = "float32"

[quantization]
backend = "{backend}"
{quant}

[peft]
method = "{method}"
{peft_lines}

[data]
source = "{DATA / "quotes.jsonl"}"
formatter = "quote-tags"
eval_fraction = 0.2
max_length = 64

[training]
batch_size = 4
learning_rate = 2e-2
max_steps = {steps}
logging_steps = 1
save_steps = 0
seed = 3
{extra}

[output]
dir = "{tmp_path / "out"}"
"""
    return write_recipe(tmp_path, text, f"{method}-{backend}.toml")
