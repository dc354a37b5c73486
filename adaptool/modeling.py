"""Loading bases and tokenizers the same way for every command (Hub ids and local paths)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from adaptool.errors import ModelError, describe
from adaptool.hub.client import bounded_requests


def quiet_libraries() -> None:
    """Keep the libraries' chatter (progress bars, known-harmless warnings) off the terminal;
    adaptool reports what matters itself."""
    import logging
    import warnings

    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    bounded_requests()  # every Hub request transformers makes gets a time limit too
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    disable_progress_bars()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*MatMul8bitLt: inputs will be cast.*")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.jit")


def is_local(name: str) -> bool:
    """A model name that is a local folder (absolute, or existing) rather than a Hub id."""
    return Path(name).is_absolute() or Path(name).expanduser().exists()


def load_tokenizer(
    name: str, *, revision: str | None = None, trust_remote_code: bool = False
) -> Any:
    """The tokenizer of the model (or adapter dir) ``name``, with a pad token (EOS when the
    tokenizer has none)."""
    from transformers import AutoTokenizer

    quiet_libraries()
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name, revision=revision, trust_remote_code=trust_remote_code
        )
    except Exception as exc:  # transformers raises OSError/ValueError/HTTP errors here
        where = (
            "the folder needs tokenizer files (tokenizer.json or a slow tokenizer's vocab)"
            if is_local(name)
            else "a Hub id needs the network (and HF_TOKEN for gated models)"
        )
        raise ModelError(
            f"could not load the tokenizer of '{name}': {describe(exc)} ({where})."
        ) from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def device() -> str:
    """``cuda`` when a GPU is there, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def free_memory() -> int:
    """Bytes free for training now: on the GPU when there is one, else in RAM."""
    import torch

    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return free
    import psutil

    return psutil.virtual_memory().available


def resolve_precision(precision: str) -> str:
    """``auto`` becomes what this machine computes fastest without losing the run: bf16 on a
    GPU that has it (else fp16) and on a CPU with native bf16 (AVX512-BF16 or AMX), else fp32.
    Anything else is returned as is."""
    if precision != "auto":
        return precision
    import torch

    if device() == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def runtime_dtype(saved: str | None) -> str:
    """The dtype to run a model saved in ``saved`` in: as saved where this machine computes
    it natively (bf16 on a GPU or a CPU with native bf16, fp16 on a GPU), else float32."""
    if saved == "bfloat16" and (device() == "cuda" or cpu_has_native_bf16()):
        return "bfloat16"
    if saved == "float16" and device() == "cuda":
        return "float16"
    return "float32"


def release_memory() -> None:
    """Give freed memory back to the system (glibc keeps freed heap pages otherwise, and the
    process's resident size stays at its training peak while it saves and plots)."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 in the CPU flags (where bf16 matmuls run at twice fp32's rate;
    elsewhere oneDNN emulates bf16, which is slower than fp32)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def weights_dtype(dtype: str | None = None, precision: str | None = None) -> Any:
    """The dtype the base's (non-quantized) weights are loaded in: ``dtype`` (a recipe's
    ``model.dtype``: float32, bfloat16, float16), or with ``auto``/None the training precision
    (fp32 on a CPU, which has no fast fp16)."""
    import torch

    if dtype not in (None, "auto"):
        return getattr(torch, dtype)
    name = PRECISION_DTYPES.get(resolve_precision(precision or "fp32"), "float32")
    if name == "float16" and device() == "cpu":
        name = "float32"
    return getattr(torch, name)


def load_base(
    name: str,
    quantizer: Any,
    *,
    revision: str | None = None,
    dtype: str | None = None,
    precision: str | None = None,
    trust_remote_code: bool = False,
    on_gpu: bool = True,
) -> Any:
    """The base model ``name`` through the quantizer plugin, its weights in ``dtype`` (see
    :func:`weights_dtype`), on the GPU when there is one (unless ``on_gpu`` is False: FSDP
    moves each process's shard of a base loaded on the CPU to its GPU). Errors name the
    model and say what to try."""
    from transformers import AutoModelForCausalLM

    quiet_libraries()
    kwargs = dict(quantizer.from_pretrained_kwargs())
    kwargs.setdefault("dtype", weights_dtype(dtype, precision))
    if device() == "cuda" and on_gpu:
        import torch

        # this process's GPU (torch.cuda.current_device(): a training process's own)
        kwargs.setdefault("device_map", {"": torch.cuda.current_device()})
    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            name,
            revision=revision,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
            **kwargs,
        )
    except Exception as exc:
        hint = (
            "the folder needs config.json and *.safetensors weights (adaptool loads no pickle "
            "weights)"
            if is_local(name)
            else "a Hub id needs the network (and HF_TOKEN for gated models); pass a local "
            "folder instead"
        )
        raise ModelError(
            f"could not load the base model '{name}' ({quantizer.name}): {describe(exc)} ({hint})."
        ) from None
    return quantizer.after_load(loaded)


def packing_refused(model: Any) -> str | None:
    """Why a micro-batch cannot be packed into one sequence exactly on ``model`` (None: it
    can). Packing is exact where the model gives per-row position ids to transformers'
    ``create_causal_mask``, which reads a restart of the position ids as a row boundary and
    masks attention block-diagonally (Llama, Qwen2, Mistral, Gemma, Phi-3, GPT-NeoX, GPT-2,
    Falcon, with ALiBi too: its bias only shifts a row's scores by a constant, which softmax
    ignores; measured in tests/training/test_batching.py). Not where the model builds its
    mask from the attention mask alone (BLOOM, OPT), nor under prompt-learning adapters,
    whose virtual tokens every row must see."""
    import inspect
    import sys

    config = getattr(model, "peft_config", {}).get("default")
    if config is not None and getattr(config, "is_prompt_learning", False):
        return "prompt-learning adapters put virtual tokens before every row"
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kind = getattr(base.config, "model_type", type(base).__name__)
    if "position_ids" not in inspect.signature(base.forward).parameters:
        return f"{kind} takes no position ids (its positions come from the attention mask)"
    module = sys.modules.get(type(base).__module__)
    if module is None or not _mask_reads_positions(module.__name__):
        return (
            f"{kind} does not give its position ids to transformers' create_causal_mask, "
            f"which is what keeps packed rows apart"
        )
    return None


@functools.cache
def _mask_reads_positions(module_name: str) -> bool:
    """True when the modeling module calls ``create_causal_mask`` (or its sliding-window twin,
    or an alias of either) with ``position_ids``, as a keyword or in the dict it spreads
    (``create_causal_mask(**mask_kwargs)``)."""
    import ast
    import inspect
    import sys

    try:
        tree = ast.parse(inspect.getsource(sys.modules[module_name]))
    except (OSError, TypeError, SyntaxError, KeyError):
        return False
    spread: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "id", None) or getattr(node.func, "attr", None) or ""
        if "mask" not in name:  # create_causal_mask, its sliding-window twin, an alias
            continue
        if any(k.arg == "position_ids" for k in node.keywords):
            return True
        spread |= {getattr(k.value, "id", "") for k in node.keywords if k.arg is None}
    for node in ast.walk(tree):  # mask_kwargs = {..., "position_ids": position_ids}
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            names = {getattr(t, "id", None) for t in node.targets}
            keys = {getattr(k, "value", None) for k in node.value.keys}
            if names & spread and "position_ids" in keys:
                return True
    return False
