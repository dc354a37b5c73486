"""Training checkpoints without pickle: a save/load round trip on a tiny real peft model and a
real AdamW step (weights, optimizer, scheduler, RNG), keeping the newest KEEP, finding the
latest complete one; and LoopState's round trip through a checkpoint."""

from __future__ import annotations

import json
import random

import torch

from adaptool.artifacts.layout import pickled
from adaptool.builtin.peft_methods import Lora
from adaptool.training.checkpoint import (
    KEEP,
    capture_rng,
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from adaptool.training.fit import LoopState, Window

IDS = torch.tensor([[5, 17, 33, 9, 100, 41, 7, 250], [8, 3, 60, 70, 11, 12, 13, 14]])


class Run:
    """A tiny BLOOM with a LoRA adapter, AdamW and a warmup + linear schedule."""

    def __init__(self, tokenizer, *, lora_seed: int) -> None:
        from peft import LoraConfig, get_peft_model
        from transformers import get_scheduler

        from adaptool.testing import make_tiny_bloom

        base = make_tiny_bloom(None, tokenizer, hidden_size=32, n_layer=1, n_head=2)
        torch.manual_seed(lora_seed)
        config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM")
        self.model = get_peft_model(base, config)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
        self.scheduler = get_scheduler(
            "linear", self.optimizer, num_warmup_steps=2, num_training_steps=10
        )

    def step(self) -> None:
        loss = self.model(input_ids=IDS, labels=IDS).loss
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()

    def adapter(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def save(self, output, step: int, **extra):
        return save_checkpoint(
            output,
            step=step,
            model=self.model,
            method=Lora(),
            optimizer_state=self.optimizer.state_dict(),
            scheduler=self.scheduler,
            rng_state=capture_rng(),
            extra=extra,
        )

    def load(self, directory) -> dict:
        return load_checkpoint(
            directory,
            model=self.model,
            method=Lora(),
            optimizer=self.optimizer,
            scheduler=self.scheduler,
        )


def optimizer_state(optimizer) -> dict:
    return {
        index: {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
        for index, state in optimizer.state_dict()["state"].items()
    }


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_same_tensors(a[key], b[key])
        elif torch.is_tensor(a[key]):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_load_restores_weights_optimizer_scheduler_and_rng(tmp_path, tokenizer):
    first = Run(tokenizer, lora_seed=1)
    first.step()
    first.step()
    folder = first.save(tmp_path, 2, tokens=40)
    weights, moments = first.adapter(), optimizer_state(first.optimizer)
    schedule, lr = first.scheduler.state_dict(), first.optimizer.param_groups[0]["lr"]
    rand_after_save, random_after_save = torch.rand(5), random.random()
    first.step()  # what the run does next, from the saved state
    continued = first.adapter()

    other = Run(tokenizer, lora_seed=2)  # another adapter init, a fresh optimizer and schedule
    assert not all(torch.equal(weights[n], p) for n, p in other.adapter().items())
    torch.manual_seed(123)
    random.seed(123)
    state = other.load(folder)

    assert state["step"] == 2
    assert state["tokens"] == 40
    assert_same_tensors(other.adapter(), weights)
    assert_same_tensors(optimizer_state(other.optimizer), moments)
    assert other.scheduler.state_dict() == schedule
    assert other.optimizer.param_groups[0]["lr"] == lr
    assert torch.equal(torch.rand(5), rand_after_save)
    assert random.random() == random_after_save
    other.step()  # resumes exactly where the first run went on
    assert_same_tensors(other.adapter(), continued)


def test_a_checkpoint_holds_no_pickle(tmp_path, tokenizer):
    run = Run(tokenizer, lora_seed=1)
    run.step()
    folder = run.save(tmp_path, 1)
    names = [p.name for p in folder.rglob("*") if p.is_file()]
    assert "adapter_model.safetensors" in names
    assert "optimizer.safetensors" in names
    assert "trainer_state.json" in names
    assert pickled(names) == []
    # peft writes a README.md model card; everything else is safetensors or JSON
    assert {n for n in names if not n.endswith((".safetensors", ".json"))} <= {"README.md"}
    json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))


def test_only_the_newest_checkpoints_are_kept(tmp_path, tokenizer):
    run = Run(tokenizer, lora_seed=1)
    for step in (1, 2, 3, 4):
        run.step()
        folder = run.save(tmp_path, step)
        assert folder == checkpoint_dir(tmp_path, step)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert KEEP == 2
    assert kept == ["latest", "step-0000003", "step-0000004"]  # latest names the newest
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-0000004"
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 4)


def test_saving_a_step_again_replaces_it(tmp_path, tokenizer):
    run = Run(tokenizer, lora_seed=1)
    run.step()
    run.save(tmp_path, 1, tokens=1)
    run.save(tmp_path, 1, tokens=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "latest",
        "step-0000001",
    ]
    state = json.loads((checkpoint_dir(tmp_path, 1) / "trainer_state.json").read_text())
    assert state["tokens"] == 2


def make_complete(folder) -> None:
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text('{"step": 0}', encoding="utf-8")


def test_latest_checkpoint_without_any(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    assert latest_checkpoint(tmp_path) is None


def test_latest_checkpoint_skips_incomplete_folders(tmp_path):
    make_complete(checkpoint_dir(tmp_path, 3))
    checkpoint_dir(tmp_path, 7).mkdir()  # no trainer_state.json
    (checkpoint_dir(tmp_path, 7) / "adapter_model.safetensors").write_bytes(b"x")
    partial = checkpoint_dir(tmp_path, 9).with_name("step-0000009.tmp")
    partial.mkdir()  # a save interrupted before its state was written
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 3)


def test_latest_checkpoint_ignores_a_tmp_folder_even_with_its_state_written(tmp_path):
    """save_checkpoint writes trainer_state.json into step-*.tmp just before the rename: a save
    cut between the two must not be taken for the newest checkpoint."""
    make_complete(checkpoint_dir(tmp_path, 3))
    make_complete(checkpoint_dir(tmp_path, 9).with_name("step-0000009.tmp"))
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 3)


def test_loop_state_round_trips_through_a_checkpoint(tmp_path, tokenizer):
    run = Run(tokenizer, lora_seed=1)
    run.step()
    state = LoopState(step=5, tokens=321, window=Window(2.5, 17, 40), last_eval=1.25)
    folder = run.save(tmp_path, state.step, **state.to_checkpoint(total_steps=12))
    saved = run.load(folder)
    assert saved["total_steps"] == 12
    back = LoopState.from_checkpoint(saved)
    assert (back.step, back.tokens, back.last_eval) == (5, 321, 1.25)
    w = back.window
    assert (w.loss, w.trained_tokens, w.real_tokens) == (2.5, 17, 40)


def test_loop_state_defaults():
    fresh = LoopState(step=3)
    back = LoopState.from_checkpoint({"step": 3, **fresh.to_checkpoint(total_steps=4)})
    assert (back.step, back.tokens, back.last_eval) == (3, 0, None)
    assert (back.window.loss, back.window.trained_tokens, back.window.real_tokens) == (0.0, 0, 0)
    # a state without the loop's extras (an older checkpoint) reads with defaults
    old = LoopState.from_checkpoint({"step": 8})
    assert (old.step, old.tokens, old.last_eval) == (8, 0, None)
    assert old.window.trained_tokens == 0
