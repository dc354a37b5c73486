"""Hub ids in place of folders: the rule, and locate (pulled copies, first use, revisions)."""

from __future__ import annotations

import json

from tests.helpers import (
    GOOD,
    cli,
    generated,
    recipe_file,
)
from tests.hubserver import hub_env


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
