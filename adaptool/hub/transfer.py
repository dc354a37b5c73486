"""Sharing through the Hugging Face Hub: ``push`` an adapter or merged model with a model card,
``pull`` one back (checked against its base before it is used), and ``locate`` a Hub id's
pulled copy for the commands that take an adapter.

Everything goes through ``huggingface_hub`` at ``HF_ENDPOINT`` (the real Hub unless set). The
token is ``token=`` if given, else ``HF_TOKEN`` or the saved login, as huggingface_hub finds
it; it is never printed."""

from __future__ import annotations

import fnmatch
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptool import store
from adaptool.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, check_adapter_dir, check_fits
from adaptool.card import is_hub_id, model_card, read_recipe
from adaptool.errors import AdapterError, AdaptoolError, HubError, describe
from adaptool.manifest import read_manifest
from adaptool.merge import TOKENIZER_FILES
from adaptool.outputs import check_output

#: what an adapter or merged model folder shares: weights, configs, tokenizer, provenance
SHARED = (
    "*.safetensors",
    "*.json",
    "*.jinja",
    "tokenizer.model",
    "merges.txt",
    "vocab.txt",
    "recipe.toml",
    "metrics.jsonl",
    "loss.png",
)
CARD = "README.md"
#: remote files a push replaces, so that a file an earlier push had and this one lacks (a shard
#: of a bigger model, say) is removed; top-level only, other files in the repo are left alone
OWNED = (
    "*.safetensors",
    "model.safetensors.index.json",
    "adapter_config.json",
    "config.json",
    "generation_config.json",
    *TOKENIZER_FILES,
    "vocab.txt",
    "adaptool.json",
    "recipe.toml",
    "metrics.jsonl",
    "loss.png",
)
#: weights serialized with pickle: loading them can run arbitrary code
PICKLE = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt")


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


# -- errors ----------------------------------------------------------------------------------


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _token_source(token: str | None) -> str:
    from huggingface_hub import get_token

    if token:
        return "the token given"
    if os.environ.get("HF_TOKEN"):
        return "the token in HF_TOKEN"
    return "your saved login (`hf auth login`)" if get_token() else "no token"


@contextmanager
def hub_errors(
    repo_id: str, revision: str | None = None, token: str | None = None
) -> Iterator[None]:
    """Turn huggingface_hub's and the network's errors into one-paragraph HubErrors."""
    from huggingface_hub import errors

    where = endpoint()
    try:
        yield
    except errors.GatedRepoError:
        raise HubError(
            f"{repo_id} is gated at {where}: accept its terms on the Hub with the account of "
            f"{_token_source(token)}, then try again."
        ) from None
    except errors.RevisionNotFoundError:
        raise HubError(
            f"{repo_id} at {where} has no revision '{revision}' (a branch, tag or commit sha)."
        ) from None
    except errors.RepositoryNotFoundError:
        raise HubError(
            f"the repo {repo_id} was not found at {where}, or it is private and "
            f"{_token_source(token)} cannot see it."
        ) from None
    except errors.EntryNotFoundError as exc:
        raise HubError(f"{repo_id} at {where}: {describe(exc)}") from None
    except errors.HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        if status == 401:
            raise HubError(
                f"the Hub at {where} rejected {_token_source(token)} (401: invalid "
                f"credentials); check the token (`hf auth login`, or HF_TOKEN) and try again."
            ) from None
        if status == 403:
            raise HubError(
                f"{_token_source(token)} may not do this on {repo_id} at {where} (403): it "
                f"needs write access to that namespace."
            ) from None
        raise HubError(
            f"the Hub at {where} answered {status} for {repo_id}: "
            f"{exc.server_message or describe(exc)}"
        ) from None
    except errors.SafetensorsParsingError as exc:
        raise HubError(f"{repo_id} at {where}: unreadable safetensors ({describe(exc)}).") from None
    except errors.OfflineModeIsEnabled:
        raise HubError(
            f"HF_HUB_OFFLINE is set, so {repo_id} cannot be fetched; unset it or give a local "
            f"folder."
        ) from None
    except errors.HFValidationError as exc:
        raise HubError(f"'{repo_id}' is not a valid Hub repo id: {describe(exc)}") from None
    except (*_network_errors(), ConnectionError, TimeoutError) as exc:
        raise HubError(
            f"could not reach the Hub at {where} for {repo_id} ({describe(exc)}); check the "
            f"network, or HF_ENDPOINT if you use a mirror."
        ) from None
    except OSError as exc:
        raise HubError(
            f"a local file problem while transferring {repo_id}: {describe(exc)}."
        ) from None


def _network_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's transport errors (httpx or requests, depending on the version)."""
    found: list[type[BaseException]] = []
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError")):
        try:
            found.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def progress_on_terminals_only() -> None:
    """huggingface_hub's transfer bars help on a terminal; in logs and pipes they are noise."""
    import sys

    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    if sys.stderr.isatty():
        enable_progress_bars()
    else:
        disable_progress_bars()


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import validate_repo_id

    with hub_errors(repo_id):
        validate_repo_id(repo_id)
    if "/" not in repo_id:
        raise HubError(
            f"'{repo_id}' needs a namespace: give it as user/{repo_id} or org/{repo_id}."
        )


# -- push ------------------------------------------------------------------------------------


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
    folder: str | Path,
    repo_id: str | None = None,
    *,
    private: bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    message: str | None = None,
    token: str | None = None,
) -> PushResult:
    """Push an adapter dir or a merged model dir to ``repo_id`` (default: the recipe's
    ``[hub] repo_id``) with a model card. Creates the repo (private unless told otherwise) and
    the branch ``revision`` when missing; files of an earlier push that this one no longer has
    are deleted in the same commit."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    path = Path(folder).expanduser().resolve()
    kind = _local_kind(path)
    hub = read_recipe(path).get("hub") or {}
    repo_id = repo_id or hub.get("repo_id")
    if not repo_id:
        raise HubError(
            f"no repo to push {path} to: give REPO_ID, or set repo_id in the recipe's [hub] "
            f"section."
        )
    _check_repo_id(repo_id)
    progress_on_terminals_only()
    private = hub.get("private", True) if private is None else private
    revision = revision or hub.get("revision")
    files = sorted(
        p.name
        for p in path.iterdir()
        if p.is_file() and not p.name.startswith(".") and _matches(p.name, SHARED)
    )
    card = model_card(path, repo_id=repo_id).encode("utf-8")
    api = HfApi(token=token)
    with hub_errors(repo_id, revision, token):
        created = _create_repo(api, repo_id, private)
        if revision and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        remote = api.list_repo_files(repo_id, revision=revision)
        stale = [
            name
            for name in remote
            if "/" not in name and name not in files and _matches(name, OWNED)
        ]
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
        kind=kind,
    )


def _create_repo(api: Any, repo_id: str, private: bool) -> bool:
    """Create the repo; False when it already existed (its visibility is left as it is)."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.create_repo(repo_id, private=private)
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        # 403: not our namespace; fine when the repo exists (a pull request to someone's repo)
        if status == 409 or (status == 403 and api.repo_exists(repo_id)):
            return False
        raise
    return True


def _local_kind(path: Path) -> str:
    """'adapter' or 'merged' for a folder fit to share; refuses pickle weights."""
    if not path.is_dir():
        raise AdaptoolError(f"{path} is not a directory; give an adapter or merged model dir.")
    pickled = sorted(p.name for p in path.iterdir() if p.is_file() and _matches(p.name, PICKLE))
    if pickled:
        raise AdapterError(
            f"{path} holds pickle weights ({', '.join(pickled[:3])}); adaptool shares "
            f"safetensors only, since loading pickle can run arbitrary code. Remove them (the "
            f"safetensors copy is what peft and transformers load) and push again."
        )
    if (path / ADAPTER_CONFIG).is_file():
        check_adapter_dir(path)
        return "adapter"
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return "merged"
    raise AdapterError(
        f"{path} holds neither an adapter ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}) nor a model "
        f"(config.json + *.safetensors)."
    )


# -- pull ------------------------------------------------------------------------------------


@dataclass
class PullResult:
    repo_id: str
    revision: str
    sha: str
    path: Path
    kind: str
    base: str | None = None
    base_override: str | None = None
    method: str | None = None
    files: list[str] = field(default_factory=list)


def pull(
    repo_id: str,
    *,
    revision: str | None = None,
    output: str | Path | None = None,
    base: str | None = None,
    overwrite: bool = False,
    token: str | None = None,
) -> PullResult:
    """Download ``repo_id`` at ``revision`` (pinned to the commit it resolves to) into the Hub
    cache or ``output``, check it, and record it for later commands. The checks: the adapter
    config parses, weights are safetensors, the base it names (or ``base``) resolves, and its
    target modules and shapes fit that base. With ``output``, nothing is left there when a
    check fails."""
    from huggingface_hub import HfApi, snapshot_download

    _check_repo_id(repo_id)
    progress_on_terminals_only()
    if base is not None and Path(base).expanduser().exists():
        base = str(Path(base).expanduser().resolve())  # recorded: must work from anywhere
    api = HfApi(token=token)
    with hub_errors(repo_id, revision, token):
        info = api.model_info(repo_id, revision=revision)
    names = [s.rfilename for s in info.siblings or []]
    kind = _remote_kind(repo_id, names)
    wanted = [n for n in names if "/" not in n and _matches(n, (*SHARED, CARD))]
    out = Path(output).expanduser().resolve() if output is not None else None
    if out is not None:
        check_output(
            out, overwrite=overwrite, inputs=[base] if base and Path(base).exists() else []
        )
        target = out.with_name(f".{out.name}.pull-tmp")
        shutil.rmtree(target, ignore_errors=True)
    try:
        with hub_errors(repo_id, info.sha, token):
            local = Path(
                snapshot_download(
                    repo_id,
                    revision=info.sha,
                    allow_patterns=wanted,
                    local_dir=None if out is None else target,
                    token=token,
                )
            )
        result = PullResult(
            repo_id=repo_id,
            revision=revision or "main",
            sha=info.sha,
            path=local,
            kind=kind,
            files=sorted(wanted),
        )
        _check_pulled(result, base, token)
        if out is not None:
            shutil.rmtree(local / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping
            if out.exists():
                shutil.rmtree(out)
            os.replace(local, out)
            result.path = out
    finally:
        if out is not None:
            shutil.rmtree(target, ignore_errors=True)
    store.record(
        store.Entry(
            path=str(result.path),
            kind=kind,
            source="pulled",
            base=result.base,
            method=result.method,
            repo_id=repo_id,
            revision=result.revision,
            sha=result.sha,
            base_override=base,
        )
    )
    return result


def _remote_kind(repo_id: str, names: list[str]) -> str:
    if ADAPTER_CONFIG in names:
        if ADAPTER_WEIGHTS not in names:
            pickled = [n for n in names if _matches(n, PICKLE)]
            if pickled:
                raise AdapterError(
                    f"{repo_id} holds only pickle weights ({pickled[0]}); adaptool loads "
                    f"safetensors only, since unpickling can run arbitrary code. Ask the owner "
                    f"for safetensors, or convert them with peft where you trust the source."
                )
            raise AdapterError(f"{repo_id} has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}.")
        return "adapter"
    if "config.json" in names:
        if not any(n.endswith(".safetensors") for n in names):
            raise AdapterError(
                f"{repo_id} holds a model without safetensors weights; adaptool loads no "
                f"pickle weights."
            )
        return "merged"
    raise AdapterError(
        f"{repo_id} holds neither a peft adapter ({ADAPTER_CONFIG}) nor a model (config.json)."
    )


def _check_pulled(result: PullResult, base: str | None, token: str | None) -> None:
    if result.kind == "merged":
        manifest = read_manifest(result.path) or {}
        result.base = ((manifest.get("base_model") or {}).get("name")) or None
        return
    check_adapter_dir(result.path)
    fit = check_fits(result.path, base=base, token=token)
    result.base, result.base_override, result.method = fit.base, base, fit.method


# -- Hub ids in place of folders -------------------------------------------------------------


@dataclass
class Located:
    """Where a command's adapter (or merged model) argument lies on disk."""

    path: Path
    #: the --base given when it was pulled (later commands use it unless given their own)
    base: str | None = None
    repo_id: str | None = None
    sha: str | None = None


def hub_target(target: str | Path) -> tuple[str, str | None] | None:
    """(repo id, revision or None) when ``target`` names a Hub repo (``org/name`` or
    ``org/name@revision``) rather than a local path; None for a local path."""
    text = str(target)
    repo_id, _, revision = text.partition("@")
    if Path(text).expanduser().exists() or not is_hub_id(repo_id):
        return None
    return repo_id, revision or None


def locate(target: str | Path, *, token: str | None = None) -> Located:
    """A local folder as is; a Hub id (``org/name`` or ``org/name@revision``) that is not a
    local folder resolves to its pulled copy, pulling it (with the checks) on first use."""
    hub_id = hub_target(target)
    if hub_id is None:
        return Located(Path(target).expanduser().resolve())
    repo_id, revision = hub_id
    text = str(target)
    entry = store.pulled(repo_id, revision)
    if entry is not None:
        return Located(Path(entry.path), entry.base_override, repo_id, entry.sha)
    try:
        result = pull(repo_id, revision=revision, token=token)
    except HubError as exc:
        raise HubError(f"{text} is not a local folder; as a Hub id: {exc}") from None
    return Located(result.path, None, repo_id, result.sha)
