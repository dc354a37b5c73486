"""``push()``: an adapter or merged model to a Hub repo, with a model card; the files of an
earlier push that this one no longer has are removed in the same commit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptool.artifacts.artifact import Artifact
from adaptool.artifacts.card import model_card, read_recipe
from adaptool.artifacts.layout import CARD, OWNED, matches, pickled, top_level
from adaptool.errors import AdapterError, HubError, param
from adaptool.hub.client import check_repo_id, hub_errors, progress_on_terminals_only


@dataclass
class PushResult:
    repo_id: str
    revision: str
    commit_url: str
    pr_url: str | None
    created: bool
    private: bool
    uploaded: list[str]
    deleted: list[str]
    kind: str


def push(
    folder: Path,
    repo_id: str | None = None,
    *,
    private: bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    message: str | None = None,
) -> PushResult:
    """Push an adapter dir or a merged model dir to ``repo_id`` (default: the recipe's
    ``[hub] repo_id``) with a model card. Creates the repo (private unless told otherwise) and
    the branch ``revision`` when missing; files of an earlier push that this one no longer has
    are deleted in the same commit."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    path = Path(folder).expanduser().resolve()
    if path.is_dir():
        pickle = pickled(top_level(path))
        if pickle:
            raise AdapterError(
                f"{path} holds pickle weights ({', '.join(pickle[:3])}); adaptool shares "
                f"safetensors only, since loading pickle can run arbitrary code. Remove them (the "
                f"safetensors copy is what peft and transformers load) and push again."
            )
    artifact = Artifact.read(path)
    hub = read_recipe(path).get("hub") or {}
    repo_id = repo_id or hub.get("repo_id")
    if not repo_id:
        raise HubError(
            f"no repo to push {path} to: give {param('repo_id', 'user/name')}, or set repo_id "
            f"in the recipe's [hub] section."
        )
    check_repo_id(repo_id)
    progress_on_terminals_only()
    private = hub.get("private", True) if private is None else private
    revision = revision or hub.get("revision")
    files = [n for n in top_level(path) if not n.startswith(".") and matches(n, OWNED)]
    card = model_card(path, repo_id=repo_id).encode("utf-8")
    api = HfApi()
    with hub_errors(repo_id, revision):
        created = _create_repo(api, repo_id, private)
        if revision and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        remote = api.list_repo_files(repo_id, revision=revision)
        stale = [n for n in remote if "/" not in n and n not in files and matches(n, OWNED)]
        operations: list[Any] = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path / name))
            for name in files
        ]
        operations.append(CommitOperationAdd(path_in_repo=CARD, path_or_fileobj=card))
        operations += [CommitOperationDelete(path_in_repo=name) for name in stale]
        commit = api.create_commit(
            repo_id,
            operations,
            commit_message=message or f"adaptool push: {path.name}",
            revision=revision,
            create_pr=create_pr,
        )
    return PushResult(
        repo_id=repo_id,
        revision=revision or "main",
        commit_url=commit.commit_url,
        pr_url=commit.pr_url,
        created=created,
        private=private,
        uploaded=[*files, CARD],
        deleted=stale,
        kind=str(artifact.kind),
    )


def _create_repo(api: Any, repo_id: str, private: bool) -> bool:
    """Create the repo; False when it already existed (its visibility is left as it is)."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.create_repo(repo_id, private=private)
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        # 403: not our namespace; fine when the repo exists (a pull request to someone's repo)
        if status == 403 and api.repo_exists(repo_id):
            return False
        if status == 409:
            return False
        raise
    return True
