"""``pull()``: an adapter or merged model from a Hub repo, pinned to the commit its revision
resolves to, checked against its base before anything uses it, and recorded in the index."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from adaptool.artifacts import index
from adaptool.artifacts.artifact import Artifact
from adaptool.artifacts.fit import check_fits
from adaptool.artifacts.layout import CARD, OWNED, Kind, classify, matches
from adaptool.artifacts.outputs import check_output, mark
from adaptool.errors import AdapterError, HubError
from adaptool.hub.client import check_repo_id, hub_errors, progress_on_terminals_only
from adaptool.merging.streaming import read_layout


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
) -> PullResult:
    """Download ``repo_id`` at ``revision`` (pinned to the commit it resolves to) into the Hub
    cache or ``output``, check it, and record it for later commands. The checks: the adapter
    config parses, weights are safetensors, the base it names (or ``base``) resolves, and its
    target modules and shapes fit that base. With ``output``, nothing is left there when a
    check fails."""
    from huggingface_hub import HfApi, snapshot_download

    check_repo_id(repo_id)
    progress_on_terminals_only()
    if base is not None and Path(base).expanduser().exists():
        base = str(Path(base).expanduser().resolve())  # recorded: must work from anywhere
    api = HfApi()
    with hub_errors(repo_id, revision):
        info = api.model_info(repo_id, revision=revision)
    names = [s.rfilename for s in info.siblings or []]
    unsafe = [n for n in names if n.startswith(("/", "~")) or "\\" in n or ".." in n.split("/")]
    if unsafe:
        raise HubError(
            f"{repo_id} lists a file whose name could escape its folder ({unsafe[0]!r}); "
            f"nothing was downloaded. The repo is damaged or hostile."
        )
    kind = classify([n for n in names if "/" not in n], repo_id)
    wanted = [n for n in names if "/" not in n and matches(n, (*OWNED, CARD))]
    out = Path(output).expanduser().resolve() if output is not None else None
    if out is not None:
        check_output(
            out, overwrite=overwrite, inputs=[base] if base and Path(base).exists() else []
        )
        target = out.with_name(f".{out.name}.pull-tmp")
        shutil.rmtree(target, ignore_errors=True)
    try:
        with hub_errors(repo_id, info.sha):
            local = Path(
                snapshot_download(
                    repo_id,
                    revision=info.sha,
                    allow_patterns=wanted,
                    local_dir=None if out is None else target,
                )
            )
        result = PullResult(
            repo_id=repo_id,
            revision=revision or "main",
            sha=info.sha,
            path=local,
            kind=str(kind),
            files=sorted(wanted),
        )
        _check_pulled(result, base)
        if out is not None:
            shutil.rmtree(local / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping
            mark(local, "pull")
            if out.exists():
                shutil.rmtree(out)
            os.replace(local, out)
            result.path = out
    finally:
        if out is not None:
            shutil.rmtree(target, ignore_errors=True)
    index.record(
        index.Entry(
            path=str(result.path),
            kind=result.kind,
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


def _check_pulled(result: PullResult, base: str | None) -> None:
    artifact = Artifact.read(result.path)
    if artifact.kind == Kind.MERGED:
        for shard in sorted(result.path.glob("*.safetensors")):  # headers only, as for adapters
            try:
                read_layout(shard)
            except (OSError, ValueError) as exc:
                raise AdapterError(
                    f"{result.repo_id}: {shard.name} is unreadable: {exc}."
                ) from None
        result.base = artifact.manifest.base_model.name if artifact.manifest else None
        return
    fit = check_fits(artifact, base=base)
    result.base, result.base_override, result.method = fit.base, base, fit.method
