"""adaptool pull against a Hub-compatible server on 127.0.0.1 (tests/hubserver.py), reached
through HF_ENDPOINT with the real huggingface_hub client."""

from __future__ import annotations

import json

from tests.helpers import (
    GOOD,
    cli,
    local_files,
)
from tests.hubserver import hub_env


def test_push_pull_by_branch_tag_and_sha_round_trips_the_bytes(hub, plugins, adapter, tmp_path):
    with hub_env(hub, GOOD, tmp_path / "home"):
        from huggingface_hub import HfApi

        pushed = cli(plugins, "push", adapter, "alice/tagger")
        assert pushed.exit_code == 0, pushed.output
        assert "created private repo alice/tagger" in pushed.output
        assert f"{hub.endpoint}/alice/tagger/commit/" in pushed.output
        assert GOOD not in pushed.output
        assert HfApi().model_info("alice/tagger").private is True

        main = hub.files("alice/tagger")
        local = local_files(adapter)
        shared = {
            "adapter_config.json",
            "adapter_model.safetensors",
            "adaptool.json",
            "recipe.toml",
            "metrics.jsonl",
            "loss.png",
            "tokenizer.json",
            "tokenizer_config.json",
        }
        assert shared <= set(main)
        assert all(main[name] == local[name] for name in shared)
        assert not any(name.startswith("checkpoints") for name in main)

        card = main["README.md"].decode()
        assert card.startswith("---\n") and "library_name: peft" in card
        assert "- adaptool" in card and "![training loss](loss.png)" in card
        assert 'PeftModel.from_pretrained(base, "alice/tagger")' in card
        assert "adaptool generate alice/tagger" in card and "[training]" in card

        # a second push goes to a branch; main keeps the first
        (adapter / "metrics.jsonl").write_bytes(local["metrics.jsonl"] + b'{"step": 99}\n')
        try:
            branch = cli(plugins, "push", adapter, "alice/tagger", "--revision", "exp")
        finally:
            (adapter / "metrics.jsonl").write_bytes(local["metrics.jsonl"])
        assert branch.exit_code == 0, branch.output
        assert hub.files("alice/tagger", "exp")["metrics.jsonl"].endswith(b'{"step": 99}\n')
        assert hub.files("alice/tagger")["metrics.jsonl"] == local["metrics.jsonl"]
        HfApi().create_tag("alice/tagger", tag="v1", revision="main")
        sha = hub.commit_sha("alice/tagger", "main")

        for revision, expected in (("exp", "exp"), ("v1", "main"), (sha, "main")):
            out = tmp_path / f"pulled-{revision}"
            pulled = cli(plugins, "pull", "alice/tagger", "--revision", revision, "--output", out)
            assert pulled.exit_code == 0, pulled.output
            assert f"commit {hub.commit_sha('alice/tagger', expected)}" in pulled.output
            assert "checked: lora adapter fits the base" in pulled.output
            remote = hub.files("alice/tagger", expected)
            remote.pop(".gitattributes")  # the Hub's own, not part of the adapter
            assert local_files(out) == remote


def test_pull_an_adapter_pushed_with_plain_peft(hub, plugins, tiny_bloom_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_bloom_dir))
    config = LoraConfig(r=4, target_modules=["query_key_value"], init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with hub_env(hub, GOOD, tmp_path / "home"):
        peft_model.push_to_hub("alice/plain")
        pulled = cli(plugins, "pull", "alice/plain", "--output", tmp_path / "plain")
        assert pulled.exit_code == 0, pulled.output
        assert f"fits the base {tiny_bloom_dir}" in pulled.output
        assert not (tmp_path / "plain" / "adaptool.json").exists()
        shown = cli(plugins, "inspect", "alice/plain", "--json")
        assert shown.exit_code == 0, shown.output
        info = json.loads(shown.output)
        assert info["kind"] == "adapter" and info["adaptool_manifest"] is False
        assert info["options"]["r"] == 4 and info["target_modules"] == ["query_key_value"]
        assert info["source"]["repo_id"] == "alice/plain"
        out = cli(plugins, "generate", "alice/plain", "Hello", "--raw", "--max-new-tokens", "4")
        assert out.exit_code == 0, out.output


def test_pickle_only_repo_is_refused(hub, plugins, tmp_path):
    config = {"peft_type": "LORA", "r": 4, "target_modules": ["query_key_value"]}
    hub.put_files(
        "alice/pickled",
        {"adapter_config.json": json.dumps(config).encode(), "adapter_model.bin": b"\x80\x04."},
    )
    with hub_env(hub, GOOD, tmp_path / "home"):
        result = cli(plugins, "pull", "alice/pickled", "--output", tmp_path / "p")
    assert result.exit_code == 2
    assert "only pickle weights (adapter_model.bin)" in result.output
    assert not (tmp_path / "p").exists()


def test_corrupt_or_incomplete_adapters_are_refused(hub, plugins, adapter, tmp_path):
    from safetensors.torch import save_file

    config = (adapter / "adapter_config.json").read_bytes()
    weights = (adapter / "adapter_model.safetensors").read_bytes()
    empty = tmp_path / "empty.safetensors"
    save_file({}, str(empty))
    bad_type = json.loads(config) | {"peft_type": "NOPE"}
    cases = {
        "alice/garbage": ({"adapter_model.safetensors": b"\xff" * 64}, "unreadable"),
        "alice/listhead": (
            {"adapter_model.safetensors": (2).to_bytes(8, "little") + b"[]"},
            "unreadable",
        ),
        "alice/empty": ({"adapter_model.safetensors": empty.read_bytes()}, "missing"),
        "alice/badtype": (
            {
                "adapter_model.safetensors": weights,
                "adapter_config.json": json.dumps(bad_type).encode(),
            },
            "not a config peft can use",
        ),
    }
    with hub_env(hub, GOOD, tmp_path / "home"):
        for repo, (files, said) in cases.items():
            hub.put_files(repo, {"adapter_config.json": config} | files)
            result = cli(plugins, "pull", repo)
            assert result.exit_code == 2, (repo, result.output)
            assert said in result.output and "Traceback" not in result.output, result.output
            shown = cli(plugins, "inspect", repo)
            assert shown.exit_code in (0, 2) and "Traceback" not in shown.output
    assert not any(
        e.source == "pulled"
        for e in __import__("adaptool.artifacts.index").artifacts.index.entries()
    )


def test_pull_never_overwrites_its_base_and_records_an_absolute_base(
    hub, plugins, adapter, tiny_bloom_dir, tmp_path, monkeypatch
):
    import shutil

    from adaptool.artifacts import index as store

    base = tmp_path / "base"
    shutil.copytree(tiny_bloom_dir, base)
    with hub_env(hub, GOOD, tmp_path / "home"):
        assert cli(plugins, "push", adapter, "alice/tagger").exit_code == 0
        clobber = cli(
            plugins, "pull", "alice/tagger", "--output", base, "--base", base, "--overwrite"
        )
        assert clobber.exit_code == 2 and "would replace the input" in clobber.output
        assert (base / "model.safetensors").is_file()

        monkeypatch.chdir(tmp_path)
        pulled = cli(plugins, "pull", "alice/tagger", "--base", "base")
        assert pulled.exit_code == 0, pulled.output
    assert store.pulled("alice/tagger").base_override == str(base)


def test_a_merged_repo_with_garbage_weights_is_refused(hub, plugins, tmp_path):
    config = b'{"model_type": "bloom", "architectures": ["BloomForCausalLM"]}'
    hub.put_files(
        "alice/garbage-merged",
        {"config.json": config, "model.safetensors": b"\xff" * 64},
    )
    with hub_env(hub, GOOD, tmp_path / "home"):
        result = cli(plugins, "pull", "alice/garbage-merged", "--output", tmp_path / "m")
    assert result.exit_code == 2, result.output
    assert "model.safetensors is unreadable" in result.output
    assert not (tmp_path / "m").exists()


def test_a_base_that_needs_remote_code_is_refused_at_merge(adapter, plugins, tmp_path):
    """merge --base with a base whose config needs remote code: refused (adaptool never runs
    it unasked), one paragraph."""
    import shutil

    base = tmp_path / "remote-base"
    base.mkdir()
    (base / "config.json").write_text(
        '{"model_type": "custom-thing", "auto_map": {"AutoConfig": "configuration_x.XConfig",'
        ' "AutoModelForCausalLM": "modeling_x.XModel"}}'
    )
    (base / "configuration_x.py").write_text("raise SystemExit('remote code ran')\n")
    shutil.copy(adapter / "adapter_model.safetensors", base / "model.safetensors")
    result = cli(plugins, "merge", adapter, "--output", tmp_path / "m", "--base", base)
    assert result.exit_code == 2, result.output
    assert "cannot be resolved" in result.output and "Traceback" not in result.output
    assert "remote code ran" not in result.output
