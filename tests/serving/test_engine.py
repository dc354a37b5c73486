"""The engine without HTTP: rows cut at stop strings (never sending what may become one),
the queue's bound, generation equal to `generate()` for the base and an adapter, and which
base an adapter belongs on."""

from __future__ import annotations

import pytest

from adaptool.errors import AdapterError
from adaptool.generate import generate
from adaptool.serving.engine import Engine, Job, QueueFull, Row, Sampling, context_length, same_base
from tests.helpers import trained


def events(job, kind):
    return [e for e in job.log if e[0] == kind]


def test_a_row_stops_at_a_stop_string_and_never_sends_part_of_one(tokenizer):
    text = "alpha beta gamma delta"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    job = Job(None, [1], Sampling(max_tokens=100, temperature=0, stop=["gamma"]))
    row = Row(job, 0, tokenizer, {tokenizer.eos_token_id})
    for token in ids:
        row.take(token)
    sent = "".join(e[2] for e in events(job, "delta"))
    assert sent == "alpha beta "
    assert events(job, "done") == [("done", 0, "stop", len(row.tokens))]
    assert row.done and "gam" not in sent


def test_a_row_ends_at_eos_or_its_budget(tokenizer):
    ids = tokenizer("one two three", add_special_tokens=False)["input_ids"]
    ended = Job(None, [1], Sampling(max_tokens=100, temperature=0))
    row = Row(ended, 0, tokenizer, {tokenizer.eos_token_id})
    for token in [*ids, tokenizer.eos_token_id]:
        row.take(token)
    assert events(ended, "done")[0][2] == "stop"
    assert "".join(e[2] for e in events(ended, "delta")) == "one two three"
    short = Job(None, [1], Sampling(max_tokens=2, temperature=0))
    row = Row(short, 0, tokenizer, {tokenizer.eos_token_id})
    for token in ids:
        row.take(token)
    assert events(short, "done") == [("done", 0, "length", 2)]


@pytest.fixture
def base(tiny_bloom_dir):
    from adaptool.modeling import load_base, load_tokenizer
    from adaptool.plugins import registry

    model = load_base(str(tiny_bloom_dir), registry().create("quantizer", "none", {})).eval()
    return model, load_tokenizer(str(tiny_bloom_dir))


def test_the_queue_refuses_past_its_size(base, tiny_bloom_dir, registry):
    model, tokenizer = base
    engine = Engine(model, tokenizer, str(tiny_bloom_dir), max_queue=3)
    engine.submit(Job(None, [5, 6], Sampling(), n=2))
    with pytest.raises(QueueFull) as full:
        engine.submit(Job(None, [5, 6], Sampling(), n=2))
    assert full.value.retry_after >= 1 and engine.queue_depth() == 2


def test_generation_is_what_generate_gives_for_the_base_and_an_adapter(
    base, tiny_bloom_dir, tmp_path, registry
):
    model, tokenizer = base
    prompt = "“Be yourself.” ->:"
    ids = tokenizer(prompt)["input_ids"]
    engine = Engine(model, tokenizer, str(tiny_bloom_dir))
    plain = engine.run_now(Job(None, ids, Sampling(max_tokens=10, temperature=0)))
    expected = generate(model, tokenizer, [prompt], max_new_tokens=10)[0].output
    assert "".join(e[2] for e in events(plain, "delta")) == expected
    adapter = trained(tmp_path, tiny_bloom_dir, name="a")
    with pytest.raises(AdapterError, match="without dots"):
        engine.add("v1.2", adapter)
    engine.add("a", adapter)
    assert engine.adapters["a"].mixable
    engine.adapters["a"].artifact.config["use_dora"] = True  # peft mixes no DoRA rows
    assert not engine.adapters["a"].mixable
    engine.adapters["a"].artifact.config["use_dora"] = False
    tuned = engine.run_now(Job("a", ids, Sampling(max_tokens=10, temperature=0)))
    engine.model.set_adapter("a")
    expected = generate(engine.model, tokenizer, [prompt], max_new_tokens=10)[0].output
    assert "".join(e[2] for e in events(tuned, "delta")) == expected
    again = engine.run_now(Job(None, ids, Sampling(max_tokens=10, temperature=0)))
    assert events(again, "delta") == events(plain, "delta")  # the base, adapter or not
    engine.remove("a")
    assert engine.adapters == {}


def test_an_adapter_belongs_on_its_own_base(tmp_path, tiny_bloom_dir):
    assert same_base("bigscience/bloom-7b1", "bigscience/bloom-7b1")
    assert not same_base("bigscience/bloom-7b1", "bigscience/bloom-560m")
    assert same_base(str(tiny_bloom_dir), str(tiny_bloom_dir) + "/")
    assert not same_base(str(tiny_bloom_dir), str(tmp_path))


def test_the_prompt_limit_is_the_models_positions_or_the_tokenizers(base):
    model, tokenizer = base
    assert context_length(model, tokenizer) > 0
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            vocab_size=50,
        )
    )
    assert context_length(llama, tokenizer) == 77


def test_methods_that_cannot_mix_are_batched_per_adapter_and_each_row_gets_its_own(
    base, tiny_bloom_dir, tmp_path, registry
):
    """IA3 has no mixed-batch forward in peft: two IA3 adapters and the base, waiting
    together, run a batch each, and every row gets what it gets alone. A LoRA adapter beside
    them is refused (peft keeps one method per model)."""
    from adaptool.recipe import load_recipe
    from adaptool.training.run import train
    from tests.helpers import method_recipe

    model, tokenizer = base
    recipe = method_recipe(tmp_path, tiny_bloom_dir, "ia3", 'target_modules = "all-linear"')
    first = train(load_recipe(recipe, [f"output.dir={tmp_path / 'i1'}"])).output_dir
    second = train(
        load_recipe(recipe, [f"output.dir={tmp_path / 'i2'}", "training.seed=11"])
    ).output_dir
    engine = Engine(model, tokenizer, str(tiny_bloom_dir))
    engine.add("i1", first)
    engine.add("i2", second)
    assert not engine.adapters["i1"].mixable
    with pytest.raises(AdapterError, match="one method per model"):
        engine.add("lora", trained(tmp_path, tiny_bloom_dir, name="lora"))
    ids = tokenizer("“Be yourself.” ->:")["input_ids"]

    def job(name):
        return Job(name, ids, Sampling(max_tokens=8, temperature=0))

    alone = {name: engine.run_now(job(name)) for name in ("i1", "i2", None)}
    together = [job(name) for name in ("i1", "i2", None, "i2")]
    batches = engine.stats.batches
    engine.run_now(*together)
    assert engine.stats.batches - batches == 3  # each adapter's rows, and the base's
    for j in together:
        assert events(j, "delta") == events(alone[j.adapter], "delta")
