"""Helpers for tests (ours and plugin authors'): tiny tokenizers and models built locally,
fake installed plugin distributions, and the contract checks a plugin's tests call
(:mod:`adaptool.testing.contracts`). The fixtures are in :mod:`adaptool.testing.pytest_plugin`,
loaded by pytest wherever adaptool is installed. Nothing here downloads anything."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from adaptool.testing.contracts import (
    assert_formatter_contract,
    assert_method_contract,
    assert_quantizer_contract,
)

__all__ = [
    "assert_formatter_contract",
    "assert_method_contract",
    "assert_quantizer_contract",
    "install_fake_plugin",
    "make_tiny_bloom",
    "make_tiny_llama",
    "make_tokenizer",
]

SPECIAL_TOKENS = {
    "pad_token": "<pad>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
}
#: A minimal chat template: every message ends with EOS, so a completion ends with it too.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def make_tokenizer(
    directory: str | Path | None,
    corpus: Iterable[str],
    *,
    vocab_size: int = 512,
    eos: bool = True,
    chat_template: str | None = CHAT_TEMPLATE,
) -> Any:
    """Train a byte-level BPE tokenizer (BLOOM-like special tokens) on ``corpus``; save it to
    ``directory`` when given. ``eos=False`` makes one without an EOS token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = dict(SPECIAL_TOKENS)
    if not eos:
        specials.pop("eos_token")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
    if chat_template:
        tokenizer.chat_template = chat_template
    if directory is not None:
        tokenizer.save_pretrained(str(directory))
    return tokenizer


def make_tiny_bloom(
    directory: str | Path | None,
    tokenizer: Any,
    *,
    hidden_size: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    seed: int = 0,
) -> Any:
    """A randomly initialised BLOOM sized for tests, its biases (linear and layer norm) random
    too, not zero; saved (safetensors) with the tokenizer to ``directory`` when given."""
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    torch.manual_seed(seed)
    config = BloomConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return _random_biases_saved(BloomForCausalLM(config), directory, tokenizer)


def make_tiny_llama(
    directory: str | Path | None,
    tokenizer: Any,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int | None = None,
    seed: int = 0,
) -> Any:
    """A randomly initialised Llama (rotary positions, grouped-query attention, biases on
    and random) sized for tests; saved (safetensors) with the tokenizer when ``directory``
    is given. The architecture packing is exact on."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate_size or 2 * hidden_size,
        attention_bias=True,
        mlp_bias=True,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return _random_biases_saved(LlamaForCausalLM(config), directory, tokenizer)


def _random_biases_saved(model: Any, directory: str | Path | None, tokenizer: Any) -> Any:
    """``model`` with random biases (transformers zeroes every bias; random ones keep merges
    that change a bias honest), saved with ``tokenizer`` to ``directory`` when given."""
    import torch

    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if name.endswith(".bias"):
                tensor.normal_(0, 0.02)
    if directory is not None:
        model.save_pretrained(str(directory))
        tokenizer.save_pretrained(str(directory))
    return model


def install_fake_plugin(
    site: str | Path,
    *,
    distribution: str,
    module: str,
    source: str,
    entry_point: str | None = None,
    version: str = "1.0",
) -> Path:
    """Write ``module.py`` and an installed-distribution record whose ``adaptool`` entry point
    names it into ``site``; put ``site`` on ``sys.path`` and ``load_plugins()`` finds it, as if
    the package had been pip-installed."""
    site = Path(site)
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(source, encoding="utf-8")
    info = site / f"{distribution.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        f"[adaptool]\n{entry_point or module} = {module}\n", encoding="utf-8"
    )
    return site


def rss_mb() -> float:
    """Resident set size of this process now, in MiB (Linux)."""
    return _proc_status("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux)."""
    return _proc_status("VmHWM")


def _proc_status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} is not in /proc/self/status")


def make_sharded_base_with_adapter(
    directory: str | Path,
    *,
    hidden_size: int,
    n_layer: int,
    shard: str,
    vocab_size: int | None = None,
    tokenizer: Any = None,
    r: int = 8,
    seed: int = 0,
    target_modules: str | list[str] | None = None,
) -> tuple[Path, Path]:
    """A random BLOOM (its biases random too, not zero) saved in fp32 safetensors shards of at
    most ``shard`` (e.g. "16MB"), with ``tokenizer`` when given, and a LoRA adapter for it
    (``target_modules``, default peft's: query_key_value) whose weights are not zero, so merging
    changes something. Returns (base dir, adapter dir)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import BloomConfig, BloomForCausalLM

    directory = Path(directory)
    torch.manual_seed(seed)
    config = BloomConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden_size,
        n_layer=n_layer,
        n_head=max(1, hidden_size // 64),
    )
    model = BloomForCausalLM(config)
    # transformers zeroes every bias; random ones keep merges that change a bias honest
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if name.endswith(".bias"):
                tensor.normal_(0, 0.02)
    base = directory / "base"
    model.save_pretrained(str(base), max_shard_size=shard)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(base))
    lora = LoraConfig(r=r, lora_alpha=2 * r, target_modules=target_modules, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    adapter = directory / "adapter"
    peft_model.save_pretrained(str(adapter))
    return base, adapter
