"""adaptool push / pull / inspect / ls against a Hub-compatible server on 127.0.0.1, reached
through HF_ENDPOINT with the real huggingface_hub client (tests/hubserver.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adaptool.cli import build_app
from adaptool.plugins import load_plugins, use_plugins
from tests.hubserver import HubServer, hub_env
from tests.test_merge import trained

GOOD, OTHER = "hf_alice_secret_token", "hf_bob_secret_token"
PROMPT = "Knowledge is power."
# huggingface_hub's LFS upload passes a file as httpx2 `data=`, which httpx2 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=:DeprecationWarning")


@pytest.fixture
def hub():
    with HubServer(tokens={GOOD: "alice", OTHER: "bob"}) as server:
        yield server
    assert server.errors == []


@pytest.fixture
def plugins():
    fresh = load_plugins(entry_points=False, strict=False, disabled=[])
    use_plugins(fresh)
    return fresh


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_bloom_dir):
    """A LoRA adapter trained by adaptool (6 steps) on the tiny local BLOOM."""
    use_plugins(load_plugins(entry_points=False, strict=False, disabled=[]))
    return trained(tmp_path_factory.mktemp("trained"), tiny_bloom_dir)


def cli(plugins, *args):
    return CliRunner().invoke(build_app(plugins), [str(a) for a in args])


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def generated(plugins, target) -> str:
    result = cli(plugins, "generate", target, PROMPT, "--json", "--max-new-tokens", "6")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["output"]


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


def test_generate_merge_and_init_adapter_take_a_pulled_hub_id(hub, plugins, adapter, tmp_path):
    with hub_env(hub, GOOD, tmp_path / "home"):
        assert cli(plugins, "push", adapter, "alice/tagger").exit_code == 0
        pulled = cli(plugins, "pull", "alice/tagger")  # into the Hub cache
        assert pulled.exit_code == 0, pulled.output
        assert generated(plugins, "alice/tagger") == generated(plugins, adapter)

        merged = cli(
            plugins, "merge", "alice/tagger", "--output", tmp_path / "m", "--dtype", "fp32"
        )
        assert merged.exit_code == 0, merged.output
        assert generated(plugins, tmp_path / "m") == generated(plugins, adapter)

        listed = json.loads(cli(plugins, "ls", "--json").output)
        sources = {(e["source"], e.get("repo_id")) for e in listed}
        assert ("pulled", "alice/tagger") in sources and ("merged", None) in sources

        # train --init-adapter REPO_ID starts from the pulled copy
        from adaptool.artifacts import index as store
        from tests.test_train import recipe_file

        base = json.loads((adapter / "adaptool.json").read_text())["base_model"]["name"]
        path = recipe_file(tmp_path, base, steps=2)
        again = tmp_path / "again"
        trained_again = cli(
            plugins, "train", path, "--output", again, "--init-adapter", "alice/tagger"
        )
        assert trained_again.exit_code == 0, trained_again.output
        manifest = json.loads((again / "adaptool.json").read_text())
        assert manifest["peft"]["init_adapter"] == store.pulled("alice/tagger").path


def test_a_hub_id_not_pulled_yet_is_pulled_on_first_use(hub, plugins, adapter, tmp_path):
    with hub_env(hub, GOOD, tmp_path / "home"):
        assert cli(plugins, "push", adapter, "alice/tagger").exit_code == 0
        assert generated(plugins, "alice/tagger") == generated(plugins, adapter)
        listed = json.loads(cli(plugins, "ls", "--json").output)
        assert [e["repo_id"] for e in listed if e["source"] == "pulled"] == ["alice/tagger"]


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


def test_wrong_token_is_a_clear_error(hub, plugins, adapter, tmp_path):
    with hub_env(hub, GOOD, tmp_path / "home"):
        assert cli(plugins, "push", adapter, "alice/tagger", "--public").exit_code == 0
    with hub_env(hub, "hf_wrong_token", tmp_path / "fresh"):
        for args in (("push", adapter, "alice/tagger"), ("pull", "alice/tagger")):
            result = cli(plugins, *args)
            assert result.exit_code == 2, result.output
            assert "rejected the token in HF_TOKEN" in result.output
            assert "Traceback" not in result.output and "hf_wrong_token" not in result.output


def test_missing_repo_private_repo_and_missing_revision(hub, plugins, adapter, tmp_path):
    with hub_env(hub, GOOD, tmp_path / "home"):
        missing = cli(plugins, "pull", "alice/nothing-here")
        assert missing.exit_code == 2
        assert "the repo alice/nothing-here was not found" in missing.output
        assert cli(plugins, "push", adapter, "alice/secret").exit_code == 0
        no_rev = cli(plugins, "pull", "alice/secret", "--revision", "nope")
        assert no_rev.exit_code == 2 and "has no revision 'nope'" in no_rev.output
    with hub_env(hub, OTHER, tmp_path / "bob"):
        hidden = cli(plugins, "pull", "alice/secret")
        assert hidden.exit_code == 2
        assert "or it is private and the token in HF_TOKEN cannot see it" in hidden.output
        denied = cli(plugins, "push", adapter, "alice/secret")
        assert denied.exit_code == 2 and "Traceback" not in denied.output
        assert "the token in HF_TOKEN may not do this on alice/secret" in denied.output


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


def test_incompatible_or_unreachable_base_is_refused(hub, plugins, adapter, tokenizer, tmp_path):
    from adaptool.testing import make_tiny_bloom

    other = tmp_path / "wider"
    make_tiny_bloom(other, tokenizer, hidden_size=96)
    with hub_env(hub, GOOD, tmp_path / "home"):
        assert cli(plugins, "push", adapter, "alice/tagger").exit_code == 0
        out = tmp_path / "p"
        wrong = cli(plugins, "pull", "alice/tagger", "--base", other, "--output", out)
        assert wrong.exit_code == 2, wrong.output
        assert f"does not fit the base '{other}'" in wrong.output
        assert "the base needs" in wrong.output and "--base" in wrong.output
        assert not out.exists() and not list(tmp_path.glob(".p.*"))

        config = json.loads((adapter / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = "bigscience/bloom-7b1"
        files = {
            "adapter_config.json": json.dumps(config).encode(),
            "adapter_model.safetensors": (adapter / "adapter_model.safetensors").read_bytes(),
        }
        hub.put_files("alice/far", files)
        far = cli(plugins, "pull", "alice/far")
        assert far.exit_code == 2
        assert "the base model 'bigscience/bloom-7b1'" in far.output
        assert "Pass --base" in far.output
        nowhere = adapter.parent.parent / "none"
        fixed = cli(plugins, "pull", "alice/far", "--base", nowhere)
        assert fixed.exit_code == 2  # a folder that does not exist is no base either
        assert f"the base model '{nowhere}'" in fixed.output


def test_inspect_a_local_adapter_and_a_hub_id_not_pulled(hub, plugins, adapter, tmp_path):
    local = cli(plugins, "inspect", adapter, "--json")
    assert local.exit_code == 0, local.output
    info = json.loads(local.output)
    from safetensors.torch import load_file

    params = sum(t.numel() for t in load_file(adapter / "adapter_model.safetensors").values())
    assert info["trainable_params"] == params
    assert info["method"] == "lora" and info["options"]["r"] == 8
    assert info["metrics"]["train_loss"] > 0 and info["quantization"] == "none"
    table = cli(plugins, "inspect", adapter)
    assert "trainable params" in table.output and "size on disk" in table.output

    with hub_env(hub, GOOD, tmp_path / "home"):
        assert cli(plugins, "push", adapter, "alice/tagger").exit_code == 0
        remote = cli(plugins, "inspect", "alice/tagger", "--json")
        assert remote.exit_code == 0, remote.output
        seen = json.loads(remote.output)
        assert seen["trainable_params"] == params
        assert seen["path"] == "alice/tagger (not pulled)"
        assert seen["source"]["sha"] == hub.commit_sha("alice/tagger")
        # inspecting pulls nothing: no weights in the cache, nothing recorded
        assert not list((tmp_path / "home").rglob("adapter_model.safetensors"))
        listed = json.loads(cli(plugins, "ls", "--json").output)
        assert not any(e["source"] == "pulled" for e in listed)


def test_push_refuses_pickle_and_needs_a_repo_id(hub, plugins, adapter, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(adapter, copy)
    with hub_env(hub, GOOD, tmp_path / "home"):
        no_repo = cli(plugins, "push", copy)
        assert no_repo.exit_code == 2 and "give REPO_ID" in no_repo.output
        (copy / "adapter_model.bin").write_bytes(b"\x80\x04.")
        pickled = cli(plugins, "push", copy, "alice/x")
        assert pickled.exit_code == 2 and "pickle weights (adapter_model.bin)" in pickled.output
    assert ("POST", "/api/repos/create") not in hub.request_log


def test_push_a_merged_model(hub, plugins, adapter, tmp_path):
    with hub_env(hub, GOOD, tmp_path / "home"):
        merged = tmp_path / "merged"
        assert cli(plugins, "merge", adapter, "--output", merged, "--dtype", "fp32").exit_code == 0
        pushed = cli(plugins, "push", merged, "alice/tagger-merged", "--public")
        assert pushed.exit_code == 0, pushed.output
        files = hub.files("alice/tagger-merged")
        assert files["model.safetensors"] == (merged / "model.safetensors").read_bytes()
        assert "library_name: transformers" in files["README.md"].decode()
        out = tmp_path / "back"
        assert cli(plugins, "pull", "alice/tagger-merged", "--output", out).exit_code == 0
        assert generated(plugins, out) == generated(plugins, adapter)


def test_push_defaults_to_the_recipes_hub_section(hub, plugins, tiny_bloom_dir, tmp_path):
    from adaptool.recipe import load_recipe
    from adaptool.training.run import train
    from tests.test_train import recipe_file

    extra = '[hub]\nrepo_id = "alice/from-recipe"\nlicense = "mit"'
    path = recipe_file(tmp_path, tiny_bloom_dir, steps=2, extra=extra)
    recipe = load_recipe(path, [f"output.dir={tmp_path / 'run'}"])
    folder = train(recipe).output_dir
    assert "license: mit" in (folder / "README.md").read_text()  # train writes the card too
    with hub_env(hub, GOOD, tmp_path / "home"):
        from huggingface_hub import HfApi

        pushed = cli(plugins, "push", folder)
        assert pushed.exit_code == 0, pushed.output
        assert HfApi().model_info("alice/from-recipe").private is True
    card = hub.files("alice/from-recipe")["README.md"].decode()
    assert "license: mit" in card and "adaptool pull alice/from-recipe" in card


def test_model_card_metadata_for_a_hub_base(adapter, tmp_path):
    import shutil

    from adaptool.artifacts.card import model_card

    copy = tmp_path / "copy"
    shutil.copytree(adapter, copy)
    manifest = json.loads((copy / "adaptool.json").read_text())
    manifest["base_model"]["name"] = "bigscience/bloom-7b1"
    manifest["quantization"] = {"backend": "bnb-4bit", "quant_type": "nf4"}
    manifest["data"]["source"] = "Abirate/english_quotes"
    (copy / "adaptool.json").write_text(json.dumps(manifest))
    card = model_card(copy, repo_id="alice/qlora")
    meta = card.split("---")[1]
    assert "base_model: bigscience/bloom-7b1" in meta and "- qlora" in meta
    assert "datasets:\n- Abirate/english_quotes" in meta
    assert "BitsAndBytesConfig(load_in_4bit=True)" in card
    assert "final train loss" in card


def test_push_removes_only_its_own_stale_files(hub, plugins, adapter, tmp_path):
    hub.put_files(
        "alice/tagger",
        {
            "model-00002-of-00002.safetensors": b"stale shard of an earlier push",
            "other/adapter_model.safetensors": b"someone else's adapter",
            "notes.md": b"the owner's notes",
        },
    )
    with hub_env(hub, GOOD, tmp_path / "home"):
        pushed = cli(plugins, "push", adapter, "alice/tagger")
    assert pushed.exit_code == 0, pushed.output
    assert "1 stale removed" in pushed.output
    files = hub.files("alice/tagger")
    assert "model-00002-of-00002.safetensors" not in files
    assert files["other/adapter_model.safetensors"] == b"someone else's adapter"
    assert files["notes.md"] == b"the owner's notes"


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


def test_a_hub_id_without_revision_means_main(hub, plugins, adapter, tmp_path):
    from adaptool.artifacts import index as store
    from adaptool.hub.locate import locate

    with hub_env(hub, GOOD, tmp_path / "home"):
        assert cli(plugins, "push", adapter, "alice/tagger").exit_code == 0
        assert (
            cli(plugins, "push", adapter, "alice/tagger", "--revision", "exp", "-m", "x").exit_code
            == 0
        )
        assert cli(plugins, "pull", "alice/tagger").exit_code == 0
        assert cli(plugins, "pull", "alice/tagger", "--revision", "exp").exit_code == 0
        main_sha = hub.commit_sha("alice/tagger")
        assert locate("alice/tagger").sha == main_sha
        assert locate("alice/tagger@exp").sha == hub.commit_sha("alice/tagger", "exp")
        assert locate(f"alice/tagger@{main_sha[:10]}").sha == main_sha
        assert {e.revision for e in store.entries() if e.source == "pulled"} == {"main", "exp"}


def test_a_missing_relative_folder_that_looks_like_a_hub_id_says_both(hub, plugins, tmp_path):
    with hub_env(hub, GOOD, tmp_path / "home"):
        result = cli(plugins, "generate", "runs/not-there", "x")
    assert result.exit_code == 2
    assert "runs/not-there is not a local folder; as a Hub id: the repo runs/not-there" in (
        result.output
    )


def test_a_damaged_index_does_not_break_ls(plugins, adapter):
    from adaptool.artifacts import index as store

    index = store.home() / store.INDEX
    index.parent.mkdir(parents=True, exist_ok=True)
    good = json.dumps(
        {
            "path": str(adapter),
            "kind": "adapter",
            "source": "trained",
            "created": "2026-11-23T10:00:00+00:00",
        }
    )
    index.write_bytes(
        b'[]\n{"path": null}\n\xff\xfe\n{"path": "x", "kind"\n' + good.encode() + b"\n"
    )
    result = cli(plugins, "ls", "--json")
    assert result.exit_code == 0, result.output
    assert [e["path"] for e in json.loads(result.output)] == [str(adapter)]
    assert str(adapter) in cli(plugins, "ls").output


def test_create_pr_opens_a_pull_request_on_someone_elses_repo(hub, plugins, adapter, tmp_path):
    with hub_env(hub, GOOD, tmp_path / "alice"):
        assert cli(plugins, "push", adapter, "alice/tagger", "--public").exit_code == 0
    main_before = hub.commit_sha("alice/tagger")
    with hub_env(hub, OTHER, tmp_path / "bob"):  # bob cannot write to alice's repo
        (tmp_path / "bob-copy").mkdir()
        for p in adapter.iterdir():
            if p.is_file():
                (tmp_path / "bob-copy" / p.name).write_bytes(p.read_bytes())
        (tmp_path / "bob-copy" / "metrics.jsonl").write_text('{"step": 1}\n')
        opened = cli(plugins, "push", tmp_path / "bob-copy", "alice/tagger", "--create-pr")
        assert opened.exit_code == 0, opened.output
        assert f"{hub.endpoint}/alice/tagger/discussions/1" in opened.output
        direct = cli(plugins, "push", tmp_path / "bob-copy", "alice/tagger")
        assert direct.exit_code == 2 and "may not do this on alice/tagger" in direct.output
    assert hub.commit_sha("alice/tagger") == main_before  # main untouched
    assert hub.files("alice/tagger", "refs/pr/1")["metrics.jsonl"] == b'{"step": 1}\n'
