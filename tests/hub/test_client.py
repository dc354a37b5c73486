"""Hub errors as one paragraph: wrong token, missing or private repo, missing revision."""

from __future__ import annotations

from tests.helpers import (
    GOOD,
    OTHER,
    cli,
)
from tests.hubserver import hub_env


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
