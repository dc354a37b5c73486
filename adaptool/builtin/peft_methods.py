"""Built-in PEFT methods: every method the installed peft trains on a causal LM, each with its
own options (peft's defaults) and what is method-specific about it — recognising and folding
its saved weights, describing it, per-step work (AdaLoRA) and parameter groups (LoRA+)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from adaptool.base import LayerToFold, Options, PeftMethod, RunInfo
from adaptool.errors import PluginError, RecipeProblem
from adaptool.hookspecs import hookimpl

if TYPE_CHECKING:
    from collections.abc import Mapping

    from adaptool.recipe.resolve import RecipePlugins
    from adaptool.recipe.schema import PeftSection, Recipe

CAUSAL_LM = "CAUSAL_LM"
#: why the 4-bit bitsandbytes base is refused by the methods that compute with the weight
PACKED_4BIT = (
    "peft 0.21 reads the packed 4-bit weight as if it were the full matrix (it fails on the "
    "first step)"
)
VIRTUAL_TOKENS = (
    "it learns virtual tokens (or per-layer prefixes) fed to the model, not a change to its "
    "weights, so there is nothing to fold; run it with `adaptool generate`"
)


def target_modules(value: Any) -> Any:
    """``auto`` lets peft pick the architecture's default (bloom: query_key_value)."""
    return None if value == "auto" else value


def _short(value: Any) -> Any:
    if isinstance(value, (list, tuple, set)):
        return sorted({str(v).rsplit(".", 1)[-1] for v in value})
    return value


class Lora(PeftMethod):
    """Low-rank adaptation; ``use_dora`` for DoRA, ``use_rslora`` for rank-stabilised scaling,
    a choice of initialisation, and a LoRA+ learning-rate ratio for the B matrices."""

    name = "lora"
    display_name = "LoRA"
    peft_type = "LORA"
    description = "LoRA (+ DoRA, rsLoRA, LoRA+; gaussian/PiSSA/OLoRA/LoftQ/EVA init)"
    weight_parts = ("lora_",)

    class Options(Options):
        use_dora: bool = False
        use_rslora: bool = False
        init: Literal["default", "gaussian", "pissa", "olora", "orthogonal", "loftq", "eva"] = (
            "default"
        )
        #: EVA: how far ranks may be redistributed between layers (max rank = r * eva_rho)
        eva_rho: float = Field(default=2.0, ge=1, le=64, allow_inf_nan=False)
        #: LoRA+: the B matrices learn this many times faster than the A matrices (1: off)
        loraplus_lr_ratio: float = Field(default=1.0, gt=0, le=1024, allow_inf_nan=False)
        #: a trainable bias on lora_B (peft's lora_bias)
        lora_bias: bool = False
        modules_to_save: list[str] | None = None

    def peft_config(self, settings: PeftSection, run: RunInfo) -> Any:
        from peft import LoraConfig

        o, c = self.options, self.common(settings)
        init: bool | str = True if o.init in ("default", "loftq") else o.init
        eva = None
        if o.init == "eva":
            from peft import EvaConfig

            eva = EvaConfig(rho=o.eva_rho)
        return LoraConfig(
            eva_config=eva,
            task_type=CAUSAL_LM,
            r=c["r"],
            lora_alpha=c["alpha"],
            lora_dropout=c["dropout"],
            bias=c["bias"],
            target_modules=target_modules(c["target_modules"]),
            use_dora=o.use_dora,
            use_rslora=o.use_rslora,
            init_lora_weights=init,
            lora_bias=o.lora_bias,
            modules_to_save=o.modules_to_save,
        )

    def describe(self, config: Mapping[str, Any]) -> dict[str, Any]:
        out = {"r": config.get("r"), "alpha": config.get("lora_alpha")}
        if config.get("use_dora"):
            out["dora"] = True
        if config.get("use_rslora"):
            out["rslora"] = True
        init = config.get("init_lora_weights")
        if init not in (True, None):
            out["init"] = init
        return out | {"targets": _short(config.get("target_modules"))}

    def after_wrap(self, model: Any, run: RunInfo) -> None:
        if self.options.init == "loftq":
            from peft import replace_lora_weights_loftq

            # the original (unquantized) weights, read from the base's safetensors: a local
            # folder as is, a Hub model from the cache its loading filled
            name = str(getattr(model.get_base_model(), "name_or_path", "") or "")
            folder = name if name and Path(name).is_dir() else None
            replace_lora_weights_loftq(model, model_path=folder)
        elif self.options.init == "eva":
            # EVA: A from the SVD of each layer's inputs on the run's first batches (masked
            # tokens left out), ranks redistributed by explained variance
            from peft import initialize_lora_eva_weights

            if run.batches is None:
                raise PluginError('init = "eva" needs training batches, which this run lacks')
            initialize_lora_eva_weights(model, dataloader=run.batches(), show_progress_bar=False)

    def param_groups(self, model: Any, learning_rate: float) -> list[dict[str, Any]]:
        ratio = self.options.loraplus_lr_ratio
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if ratio == 1.0:
            return [{"params": [p for _, p in params]}]
        fast = [p for n, p in params if "lora_B" in n or "lora_magnitude" in n]
        slow = [p for n, p in params if not ("lora_B" in n or "lora_magnitude" in n)]
        return [
            {"params": slow, "lr": learning_rate},
            {"params": fast, "lr": learning_rate * ratio},
        ]

    def needs_initial_state(self) -> bool:
        return self.options.init in ("pissa", "olora")

    def save(self, model: Any, folder: Path, *, initial: Path | None = None) -> None:
        if not self.needs_initial_state() or initial is None:
            model.save_pretrained(str(folder))
            return
        # PiSSA/OLoRA rewrite the base weights they start from: saved converted to a plain
        # LoRA (rank 2r) on the original base, which every runtime adds as it adds any LoRA
        model.save_pretrained(str(folder), path_initial_model_for_weight_conversion=str(initial))

    def recipe_problems(self, recipe: Recipe, plugins: RecipePlugins) -> list[RecipeProblem]:
        problems = super().recipe_problems(recipe, plugins)
        backend = recipe.quantization.backend
        if self.options.use_dora and backend == "bnb-8bit":
            problems.append(
                RecipeProblem(
                    "peft.use_dora",
                    "DoRA gives wrong outputs on a bitsandbytes 8-bit base (peft 0.21); use "
                    'quantization.backend = "bnb-4bit" or "none", or set use_dora = false',
                )
            )
        if self.options.init in ("pissa", "olora") and plugins.quantizer.quantized:
            problems.append(
                RecipeProblem(
                    "peft.init",
                    f'init = "{self.options.init}" rewrites the base weights and cannot run on a '
                    f'quantized base ({backend}); use init = "default" or "gaussian"',
                )
            )
        if self.options.init == "loftq" and backend != "bnb-4bit":
            problems.append(
                RecipeProblem(
                    "peft.init",
                    'init = "loftq" initialises LoRA to correct the 4-bit quantization error: it '
                    'needs quantization.backend = "bnb-4bit"',
                )
            )
        elif self.options.init == "loftq" and not _accelerator():
            problems.append(
                RecipeProblem(
                    "peft.init",
                    'init = "loftq": peft computes the LoftQ initialisation on a GPU (CUDA or '
                    'XPU) only, and this machine has none; use init = "default" here',
                )
            )
        if self.options.loraplus_lr_ratio != 1.0 and self.options.use_dora:
            problems.append(
                RecipeProblem(
                    "peft.loraplus_lr_ratio",
                    "LoRA+ and DoRA together are not supported; choose one",
                )
            )
        return problems


class IA3(PeftMethod):
    """(IA)³: learned vectors that rescale activations (keys, values, feed-forward inputs)."""

    name = "ia3"
    display_name = "IA³"
    peft_type = "IA3"
    description = "(IA)³: rescaling vectors"
    uses = frozenset({"target_modules"})
    weight_parts = ("ia3_",)

    class Options(Options):
        #: which of the targets are feed-forward layers (scaled on their input); default:
        #: peft's choice for the architecture
        feedforward_modules: list[str] | None = None

    def peft_config(self, settings: PeftSection, run: RunInfo) -> Any:
        from peft import IA3Config

        return IA3Config(
            task_type=CAUSAL_LM,
            target_modules=target_modules(self.common(settings)["target_modules"]),
            feedforward_modules=self.options.feedforward_modules,
        )

    def after_wrap(self, model: Any, run: RunInfo) -> None:
        """peft resolves ``all-linear`` to full module names but leaves the feed-forward
        modules as suffixes, then refuses its own saved config on load (``feedforward_modules
        should be a subset of target_modules``): both are saved as the full names."""
        config = model.peft_config["default"]
        targets, forward = config.target_modules, config.feedforward_modules
        if not isinstance(targets, (set, list)) or forward is None or isinstance(forward, str):
            return
        names = set(targets)
        if set(forward) <= names:
            return
        config.feedforward_modules = {
            t for t in names if any(t == f or t.endswith("." + f) for f in forward)
        }

    def describe(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "targets": _short(config.get("target_modules")),
            "feedforward": _short(config.get("feedforward_modules")),
        }


class _Lycoris(PeftMethod):
    """LoHa and LoKr share their options (LyCORIS family)."""

    defaults: ClassVar[Mapping[str, Any]] = {"alpha": 8.0, "dropout": 0.0}
    uses = frozenset({"r", "alpha", "dropout", "target_modules"})
    unsupported_backends: ClassVar[Mapping[str, str]] = {"bnb-4bit": PACKED_4BIT}

    class Options(Options):
        module_dropout: float = Field(default=0.0, ge=0, lt=1)

    def _kwargs(self, settings: PeftSection) -> dict[str, Any]:
        c = self.common(settings)
        return {
            "task_type": CAUSAL_LM,
            "r": c["r"],
            "alpha": c["alpha"],
            "rank_dropout": c["dropout"],
            "module_dropout": self.options.module_dropout,
            "target_modules": target_modules(c["target_modules"]),
        }

    def describe(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "r": config.get("r"),
            "alpha": config.get("alpha"),
            "targets": _short(config.get("target_modules")),
        }


class LoHa(_Lycoris):
    """Low-rank Hadamard product (LyCORIS)."""

    name = "loha"
    display_name = "LoHa"
    peft_type = "LOHA"
    description = "LoHa: low-rank Hadamard product"
    weight_parts = ("hada_",)

    def peft_config(self, settings: PeftSection, run: RunInfo) -> Any:
        from peft import LoHaConfig

        return LoHaConfig(**self._kwargs(settings))


class LoKr(_Lycoris):
    """Low-rank Kronecker product (LyCORIS)."""

    name = "lokr"
    display_name = "LoKr"
    peft_type = "LOKR"
    description = "LoKr: low-rank Kronecker product"
    weight_parts = ("lokr_",)

    class Options(_Lycoris.Options):
        decompose_both: bool = False
        decompose_factor: int = -1

    def peft_config(self, settings: PeftSection, run: RunInfo) -> Any:
        from peft import LoKrConfig

        return LoKrConfig(
            **self._kwargs(settings),
            decompose_both=self.options.decompose_both,
            decompose_factor=self.options.decompose_factor,
        )


class OFT(PeftMethod):
    """Orthogonal fine-tuning: block-diagonal orthogonal rotations of each weight."""

    name = "oft"
    display_name = "OFT"
    peft_type = "OFT"
    description = "OFT: orthogonal fine-tuning"
    uses = frozenset({"dropout", "bias", "target_modules"})
    defaults: ClassVar[Mapping[str, Any]] = {"dropout": 0.0}
    weight_parts = ("oft_",)

    class Options(Options):
        #: the size of each orthogonal block (peft: r = 0 means "derive from the block size")
        block_size: int = Field(default=32, gt=0)
        coft: bool = False
        block_share: bool = False

    def peft_config(self, settings: PeftSection, run: RunInfo) -> Any:
        from peft import OFTConfig

        c = self.common(settings)
        return OFTConfig(
            task_type=CAUSAL_LM,
            r=0,
            oft_block_size=self.options.block_size,
            module_dropout=c["dropout"],
            bias=c["bias"],
            coft=self.options.coft,
            block_share=self.options.block_share,
            target_modules=target_modules(c["target_modules"]),
        )

    def describe(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "block_size": config.get("oft_block_size"),
            "targets": _short(config.get("target_modules")),
        }


class BOFT(PeftMethod):
    """Butterfly orthogonal fine-tuning."""

    name = "boft"
    display_name = "BOFT"
    peft_type = "BOFT"
    description = "BOFT: butterfly orthogonal fine-tuning"
    uses = frozenset({"dropout", "bias", "target_modules"})
    defaults: ClassVar[Mapping[str, Any]] = {"dropout": 0.0}
    weight_parts = ("boft_",)

    class Options(Options):
        block_size: int = Field(default=4, ge=0)
        block_num: int = Field(default=0, ge=0)
        n_butterfly_factor: int = Field(default=1, ge=1)

    def peft_config(self, settings: PeftSection, run: RunInfo) -> Any:
        from peft import BOFTConfig

        c = self.common(settings)
        return BOFTConfig(
            task_type=CAUSAL_LM,
            boft_block_size=self.options.block_size,
            boft_block_num=self.options.block_num,
            boft_n_butterfly_factor=self.options.n_butterfly_factor,
            boft_dropout=c["dropout"],
            bias=c["bias"],
            target_modules=target_modules(c["target_modules"]),
        )

    def describe(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "block_size": config.get("boft_block_size"),
            "butterfly_factor": config.get("boft_n_butterfly_factor"),
            "targets": _short(config.get("target_modules")),
        }


class VeRA(PeftMethod):
    """Vector-based random matrix adaptation: frozen random projections shared by every layer,
    trained scaling vectors per layer."""

    name = "vera"
    display_name = "VeRA"
    peft_type = "VERA"
    description = "VeRA: shared random projections, trained scaling vectors"
    uses = frozenset({"r", "dropout", "bias", "target_modules"})
    defaults: ClassVar[Mapping[str, Any]] = {"r": 256, "dropout": 0.0}
    weight_parts = ("vera_lambda_",)
    shared_weights = ("vera_A", "vera_B")

    class Options(Options):
        d_initial: float = Field(default=0.1, allow_inf_nan=False)
        projection_prng_key: int = Field(default=0, ge=0)

    def peft_config(self, settings: PeftSection, run: RunInfo) -> Any:
        from peft import VeraConfig

        c = self.common(settings)
        return VeraConfig(
            task_type=CAUSAL_LM,
            r=c["r"],
            vera_dropout=c["dropout"],
            bias=c["bias"],
            d_initial=self.options.d_initial,
            projection_prng_key=self.options.projection_prng_key,
            save_projection=True,  # the adapter then loads without re-deriving them
            target_modules=target_modules(c["target_modules"]),
        )

    def fold(self, layer: LayerToFold) -> tuple[Any, Any]:
        """W + (λ_b · B[:out]) @ (λ_d · A[:, :in]), as peft's VeraLayer computes its delta."""
        out_features, in_features = layer.weight.shape
        a = layer.shared["vera_A"].float()[:, :in_features]
        b = layer.shared["vera_B"].float()[:out_features, :]
        lambda_b = layer.tensors["vera_lambda_b"].float().unsqueeze(-1)
        lambda_d = layer.tensors["vera_lambda_d"].float().unsqueeze(-1)
        return layer.weight + (lambda_b * b) @ (lambda_d * a), layer.bias

    def describe(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return {"r": config.get("r"), "targets": _short(config.get("target_modules"))}


class FourierFT(PeftMethod):
    """Fourier-domain fine-tuning: a few trained spectral coefficients per weight."""

    name = "fourierft"
    display_name = "FourierFT"
    peft_type = "FOURIERFT"
    description = "FourierFT: trained spectral coefficients"
    uses = frozenset({"bias", "target_modules"})
    weight_parts = ("fourierft_",)

    class Options(Options):
        n_frequency: int = Field(default=1000, gt=0)
        scaling: float = Field(default=150.0, allow_inf_nan=False)
        random_loc_seed: int = 777

    def peft_config(self, settings: PeftSection, run: RunInfo) -> Any:
        from peft import FourierFTConfig

        c = self.common(settings)
        return FourierFTConfig(
            task_type=CAUSAL_LM,
            n_frequency=self.options.n_frequency,
            scaling=self.options.scaling,
            random_loc_seed=self.options.random_loc_seed,
            bias=c["bias"],
            target_modules=target_modules(c["target_modules"]),
        )

    def describe(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "n_frequency": config.get("n_frequency"),
            "scaling": config.get("scaling"),
            "targets": _short(config.get("target_modules")),
        }


class HRA(PeftMethod):
    """Householder reflection adaptation: a chain of r reflections applied to each weight."""

    name = "hra"
    display_name = "HRA"
    peft_type = "HRA"
    description = "HRA: Householder reflections"
    uses = frozenset({"r", "bias", "target_modules"})
    weight_parts = ("hra_",)
    unsupported_backends: ClassVar[Mapping[str, str]] = {"bnb-4bit": PACKED_4BIT}

    class Options(Options):
        apply_gs: bool = False

    def peft_config(self, settings: PeftSection, run: RunInfo) -> Any:
        from peft import HRAConfig

        c = self.common(settings)
        return HRAConfig(
            task_type=CAUSAL_LM,
            r=c["r"],
            apply_GS=self.options.apply_gs,
            bias=c["bias"],
            target_modules=target_modules(c["target_modules"]),
        )

    def describe(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return {"r": config.get("r"), "targets": _short(config.get("target_modules"))}


class LNTuning(PeftMethod):
    """Tunes the layer norms only (a trained copy of each; the original kept frozen)."""

    name = "ln-tuning"
    display_name = "LN tuning"
    peft_type = "LN_TUNING"
    description = "LayerNorm tuning"
    uses = frozenset({"target_modules"})
    weight_parts = ("ln_tuning_layers",)

    def peft_config(self, settings: PeftSection, run: RunInfo) -> Any:
        from peft import LNTuningConfig

        targets = target_modules(self.common(settings)["target_modules"])
        if targets == "all-linear":
            targets = None  # layer norms are not linear layers: peft's own choice
        return LNTuningConfig(task_type=CAUSAL_LM, target_modules=targets)

    def fold(self, layer: LayerToFold) -> tuple[Any, Any]:
        """The tuned copy replaces the layer norm."""
        weight = layer.tensors["ln_tuning_layers.weight"].float()
        bias = layer.tensors.get("ln_tuning_layers.bias")
        if weight.shape != layer.weight.shape:
            from adaptool.errors import AdapterError

            raise AdapterError(
                f"the adapter's {layer.module} {tuple(weight.shape)} does not fit the base "
                f"layer {tuple(layer.weight.shape)}: the adapter was trained on another model."
            )
        return weight, (bias.float() if bias is not None else layer.bias)

    def recipe_problems(self, recipe: Recipe, plugins: RecipePlugins) -> list[RecipeProblem]:
        problems = super().recipe_problems(recipe, plugins)
        if recipe.peft.target_modules == "all-linear":
            problems.append(
                RecipeProblem(
                    "peft.target_modules",
                    'LN tuning tunes layer norms, not linear layers: use "auto" or name the '
                    "layer norms",
                )
            )
        return problems


class AdaLoRA(PeftMethod):
    """LoRA in SVD form whose rank budget is re-allocated across layers while training."""

    name = "adalora"
    display_name = "AdaLoRA"
    peft_type = "ADALORA"
    description = "AdaLoRA: adaptive rank allocation"
    uses = frozenset({"alpha", "dropout", "bias", "target_modules"})
    defaults: ClassVar[Mapping[str, Any]] = {"alpha": 8.0, "dropout": 0.0}
    weight_parts = ("lora_",)

    class Options(Options):
        init_r: int = Field(default=12, gt=0)
        target_r: int = Field(default=8, gt=0)
        #: steps of warm-up before ranks are pruned, and of fine-tuning after
        tinit: int = Field(default=0, ge=0)
        tfinal: int = Field(default=0, ge=0)
        delta_t: int = Field(default=1, gt=0)
        beta1: float = Field(default=0.85, ge=0, lt=1)
        beta2: float = Field(default=0.85, ge=0, lt=1)
        orth_reg_weight: float = Field(default=0.5, ge=0, allow_inf_nan=False)

    def peft_config(self, settings: PeftSection, run: RunInfo) -> Any:
        from peft import AdaLoraConfig

        o, c = self.options, self.common(settings)
        total = run.total_steps or (o.tinit + o.tfinal + 1)
        return AdaLoraConfig(
            task_type=CAUSAL_LM,
            init_r=o.init_r,
            target_r=o.target_r,
            tinit=o.tinit,
            tfinal=o.tfinal,
            deltaT=o.delta_t,
            beta1=o.beta1,
            beta2=o.beta2,
            orth_reg_weight=o.orth_reg_weight,
            total_step=total,
            lora_alpha=c["alpha"],
            lora_dropout=c["dropout"],
            bias=c["bias"],
            target_modules=target_modules(c["target_modules"]),
        )

    def loss_term(self, model: Any) -> Any | None:
        """peft adds this to ``outputs.loss`` in its forward; adaptool computes the loss itself,
        so it adds it here: the mean Frobenius distance of AᵀA and BBᵀ from the identity."""
        import torch

        weight = self.options.orth_reg_weight
        if weight == 0:
            return None
        terms = []
        for name, p in model.named_parameters():
            if p.requires_grad and ("lora_A" in name or "lora_B" in name):
                cov = p @ p.T if "lora_A" in name else p.T @ p
                eye = torch.eye(*cov.shape, dtype=cov.dtype, device=cov.device)
                terms.append(torch.linalg.matrix_norm(cov - eye))
        return weight * torch.stack(terms).mean() if terms else None

    def after_optimizer_step(self, model: Any, step: int) -> None:
        model.base_model.update_and_allocate(step)

    def saved_shapes(self, model: Any) -> dict[str, tuple[int, ...]]:
        """peft saves each layer cut to the rank its pattern keeps."""
        config = model.peft_config["default"]
        pattern, config.rank_pattern = config.rank_pattern, None
        try:
            shapes = super().saved_shapes(model)
        finally:
            config.rank_pattern = pattern
        for name, mask in (pattern or {}).items():
            prefix, rank = "base_model.model." + name.rsplit(".", 1)[0], sum(mask)
            for part in ("lora_E", "lora_A", "lora_B"):
                key = f"{prefix}.{part}"
                if key in shapes:
                    shape = list(shapes[key])
                    shape[1 if part == "lora_B" else 0] = rank
                    shapes[key] = tuple(shape)
        return shapes

    def save_checkpoint(self, model: Any, folder: Path) -> None:
        """The full-size matrices (peft would save them cut to the current rank pattern, which
        a fresh model cannot take back mid-run), the rank pattern and the importance scores."""
        from safetensors.torch import save_file

        config = model.peft_config["default"]
        pattern, config.rank_pattern = config.rank_pattern, None
        try:
            model.save_pretrained(str(folder))
        finally:
            config.rank_pattern = pattern
        allocator = model.base_model.rankallocator
        tensors = {
            f"{kind}.{name}": value.detach().cpu().contiguous()
            for kind in ("ipt", "exp_avg_ipt", "exp_avg_unc")
            for name, value in getattr(allocator, kind).items()
        }
        for name, mask in (pattern or {}).items():
            tensors[f"rank_pattern.{name}"] = torch_bool(mask)
        save_file(tensors, str(folder / ADALORA_STATE))

    def load_checkpoint(self, model: Any, folder: Path) -> None:
        from safetensors.torch import load_file

        super().load_checkpoint(model, folder)
        allocator = model.base_model.rankallocator
        pattern = {}
        for key, value in load_file(str(folder / ADALORA_STATE)).items():
            kind, name = key.split(".", 1)
            if kind == "rank_pattern":
                pattern[name] = value.tolist()
            else:
                getattr(allocator, kind)[name] = value
        model.peft_config["default"].rank_pattern = pattern or None

    def fold(self, layer: LayerToFold) -> tuple[Any, Any]:
        """W + B @ (A · E) · scaling / ranknum, as peft's SVDLinear merges it (ranknum is the
        initial rank, which pruning keeps)."""
        config = layer.config
        a = layer.tensors["lora_A"].float()
        b = layer.tensors["lora_B"].float()
        e = layer.tensors["lora_E"].float()
        rank = a.shape[0]
        scaling = config.lora_alpha if config.lora_alpha > 0 else float(rank)
        if a.shape[1] != layer.weight.shape[1] or b.shape[0] != layer.weight.shape[0]:
            from adaptool.errors import AdapterError

            raise AdapterError(
                f"the adapter's {layer.module} does not fit the base layer "
                f"{tuple(layer.weight.shape)}: the adapter was trained on another model."
            )
        delta = b @ (a * e) * scaling / (float(config.init_r) + 1e-5)
        return layer.weight + delta, layer.bias

    def describe(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "init_r": config.get("init_r"),
            "target_r": config.get("target_r"),
            "alpha": config.get("lora_alpha"),
            "targets": _short(config.get("target_modules")),
        }

    def recipe_problems(self, recipe: Recipe, plugins: RecipePlugins) -> list[RecipeProblem]:
        problems = super().recipe_problems(recipe, plugins)
        o, steps = self.options, recipe.training.max_steps
        if steps is not None and o.tinit >= steps - o.tfinal:
            problems.append(
                RecipeProblem(
                    "peft.tinit",
                    f"AdaLoRA needs steps between tinit ({o.tinit}) and the last tfinal "
                    f"({o.tfinal}) of the {steps} steps to allocate ranks in; lower them",
                )
            )
        if o.target_r > o.init_r:
            problems.append(RecipeProblem("peft.target_r", "target_r must not exceed init_r"))
        return problems


#: AdaLoRA's rank allocation state in a checkpoint
ADALORA_STATE = "adalora_state.safetensors"


def torch_bool(values: list[bool]) -> Any:
    import torch

    return torch.tensor(values, dtype=torch.bool)


class _PromptLearning(PeftMethod):
    """Methods that learn virtual tokens: nothing to fold, no target modules."""

    uses = frozenset()
    mergeable = False
    not_mergeable_because = VIRTUAL_TOKENS

    def describe(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return {"virtual_tokens": config.get("num_virtual_tokens")}


class PromptTuning(_PromptLearning):
    """Soft prompt: trained embeddings of a few virtual tokens put before every input."""

    name = "prompt-tuning"
    display_name = "prompt tuning"
    peft_type = "PROMPT_TUNING"
    description = "prompt tuning: trained virtual-token embeddings"

    class Options(Options):
        num_virtual_tokens: int = Field(default=20, gt=0, le=4096)
        #: start the virtual tokens from the embeddings of this text (else random)
        init_text: str | None = None

    def peft_config(self, settings: PeftSection, run: RunInfo) -> Any:
        from peft import PromptTuningConfig, PromptTuningInit

        o = self.options
        text = o.init_text
        return PromptTuningConfig(
            task_type=CAUSAL_LM,
            num_virtual_tokens=o.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=text,
            tokenizer_name_or_path=run.tokenizer if text else None,
        )


class PrefixTuning(_PromptLearning):
    """Trained key/value prefixes in every attention layer."""

    name = "prefix-tuning"
    display_name = "prefix tuning"
    peft_type = "PREFIX_TUNING"
    description = "prefix tuning: trained attention prefixes"

    class Options(Options):
        num_virtual_tokens: int = Field(default=20, gt=0, le=4096)
        #: reparameterise the prefixes through an MLP while training
        prefix_projection: bool = False
        encoder_hidden_size: int | None = Field(default=None, gt=0)

    def peft_config(self, settings: PeftSection, run: RunInfo) -> Any:
        from peft import PrefixTuningConfig

        o = self.options
        return PrefixTuningConfig(
            task_type=CAUSAL_LM,
            num_virtual_tokens=o.num_virtual_tokens,
            prefix_projection=o.prefix_projection,
            encoder_hidden_size=o.encoder_hidden_size,
        )


class PTuning(_PromptLearning):
    """P-tuning: virtual-token embeddings produced by a small trained prompt encoder."""

    name = "p-tuning"
    display_name = "P-tuning"
    peft_type = "P_TUNING"
    description = "P-tuning: virtual tokens from a prompt encoder"

    class Options(Options):
        num_virtual_tokens: int = Field(default=20, gt=0, le=4096)
        encoder: Literal["MLP", "LSTM"] = "MLP"
        encoder_hidden_size: int | None = Field(default=None, gt=0)
        encoder_num_layers: int = Field(default=2, gt=0)

    def peft_config(self, settings: PeftSection, run: RunInfo) -> Any:
        from peft import PromptEncoderConfig

        o = self.options
        return PromptEncoderConfig(
            task_type=CAUSAL_LM,
            num_virtual_tokens=o.num_virtual_tokens,
            encoder_reparameterization_type=o.encoder,
            encoder_hidden_size=o.encoder_hidden_size,
            encoder_num_layers=o.encoder_num_layers,
        )


def _accelerator() -> bool:
    """Whether torch sees a CUDA or XPU device (where peft's LoftQ runs)."""
    import torch

    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu and xpu.is_available())


METHODS = (
    Lora,
    IA3,
    LoHa,
    LoKr,
    OFT,
    BOFT,
    VeRA,
    FourierFT,
    HRA,
    LNTuning,
    AdaLoRA,
    PromptTuning,
    PrefixTuning,
    PTuning,
)


@hookimpl
def register_peft_methods(register) -> None:
    for method in METHODS:
        register(method)
