"""adaptool push against the local Hub-compatible server."""

from __future__ import annotations

from tests.helpers import (
    GOOD,
    OTHER,
    cli,
    generated,
    recipe_file,
)
from tests.hubserver import hub_env


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


def test_push_uploads_only_the_files_the_artifact_owns(hub, plugins, adapter, tmp_path):
    """A stray credentials.json (or notes, or a data dump) beside the adapter never leaves the
    machine: push uploads the artifact's own files by name."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(adapter, copy)
    (copy / "credentials.json").write_text('{"aws_secret_access_key": "hunter2"}')
    (copy / "notes.txt").write_text("private")
    (copy / "data.json").write_text("[1, 2]")
    with hub_env(hub, GOOD, tmp_path / "home"):
        pushed = cli(plugins, "push", copy, "alice/owned")
        assert pushed.exit_code == 0, pushed.output
    files = set(hub.files("alice/owned"))
    assert not files & {"credentials.json", "notes.txt", "data.json", ".adaptool"}
    assert {"adapter_config.json", "adapter_model.safetensors", "adaptool.json"} <= files
    assert {"tokenizer.json", "recipe.toml", "metrics.jsonl", "loss.png", "README.md"} <= files
