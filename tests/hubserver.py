"""A test double of the Hugging Face Hub's HTTP API, for integration tests without internet.

`HubServer` is a small in-memory Hub that the real `huggingface_hub` client talks to over real
HTTP on 127.0.0.1: create repos, upload (regular files and LFS), download, list, branch and tag.
It implements only what that client sends (see docs/HUB_PROTOCOL.md in the shared docs), with
the Hub's error shapes (X-Error-Code / X-Error-Message headers), so that error paths can be
tested too. It is not a Hub: no PRs, no xet, no pagination, no gated repos.

`hub_env()` points an already imported `huggingface_hub` at a server for the duration of a
`with` block (the client freezes its settings at import, so setting env vars is not enough);
`hub_environ()` builds the environment for a subprocess instead.

    with HubServer(tokens={"hf_good": "alice"}) as hub, hub_env(hub, "hf_good", tmp_path):
        HfApi().create_repo("alice/demo", private=True)
        ...
        assert hub.files("alice/demo") == {...}
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import json
import os
import re
import secrets
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, unquote, urlsplit

# Files matching these patterns, or of LFS_THRESHOLD bytes and more, are stored with LFS (preupload
# answers uploadMode "lfs"). The patterns make up the .gitattributes of new repos, as on the Hub.
_LFS_GLOBS = """
    *.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack
    *.npy *.npz *.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors
    saved_model/**/* *.tar.* *.tar *.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents* *.png *.jpg
    *.jpeg
"""
LFS_PATTERNS = tuple(_LFS_GLOBS.split())
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()
LFS_THRESHOLD = 1_000_000
INVALID_TOKEN = "Invalid credentials in Authorization header"
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def is_lfs(path: str, size: int) -> bool:
    """Whether the test Hub stores `path` with LFS (its preupload answer `uploadMode: "lfs"`)."""
    name = path.rsplit("/", 1)[-1]
    return size >= LFS_THRESHOLD or any(
        fnmatch.fnmatch(path if "/" in p else name, p) for p in LFS_PATTERNS
    )


def git_sha1(data: bytes) -> str:
    """The git blob id of `data`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


@dataclass(frozen=True)
class Blob:
    """File content; `lfs` says whether git would hold it as an LFS pointer."""

    data: bytes
    lfs: bool

    @property
    def size(self) -> int:
        return len(self.data)

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @cached_property
    def pointer(self) -> bytes:
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
            f"size {self.size}\n"
        ).encode()

    @cached_property
    def oid(self) -> str:
        """Git blob id, as in tree listings: of the pointer file for LFS files."""
        return git_sha1(self.pointer if self.lfs else self.data)

    @property
    def etag(self) -> str:
        """ETag of /resolve: sha256 for LFS files, git sha1 otherwise (it names the cache blob)."""
        return self.sha256 if self.lfs else self.oid

    def tree_entry(self, path: str) -> dict:
        entry = {"type": "file", "path": path, "size": self.size, "oid": self.oid}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": len(self.pointer)}
        return entry


@dataclass(frozen=True)
class Commit:
    """An immutable snapshot: path -> Blob."""

    sha: str
    parent: str | None
    files: Mapping[str, Blob]
    title: str
    message: str
    author: str
    date: str


@dataclass
class Repo:
    type: str
    id: str
    owner: str
    private: bool
    created_at: str = field(default_factory=_now)
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    pull_requests: dict[int, str] = field(default_factory=dict)  # number -> head commit

    @property
    def url_path(self) -> str:
        return URL_PREFIXES[self.type] + self.id


class HubError(Exception):
    """An error reply: status, message and the Hub's X-Error-Code (RepoNotFound, ...)."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers: dict[str, str] = extra.pop("headers", {})
        self.extra = extra  # more JSON fields for the body

    def reply(self) -> Reply:
        headers = {**self.headers, "X-Error-Message": self.message}
        if self.code:
            headers["X-Error-Code"] = self.code
        return _json({"error": self.message, **self.extra}, self.status, headers)


@dataclass
class Request:
    method: str
    path: str  # raw, without the query
    segments: list[str]  # the raw path split on "/", then each segment unquoted
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    user: str | None  # from a valid token; None without one

    def json(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except ValueError as e:
            raise HubError(400, f"Invalid JSON body: {e}") from None

    def flag(self, name: str) -> bool:
        return self.query.get(name, [""])[0].lower() in ("1", "true")


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _json(obj, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    headers = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
    return Reply(status, json.dumps(obj).encode(), headers)


class HubServer:
    """A test double of the Hub's HTTP API: an in-memory Hub served on 127.0.0.1.

    `tokens` maps token -> user name; `orgs` maps organisation -> member user names. A user may
    write to their own namespace and to their organisations'. Use as a context manager (started
    on entry) or call `start()` (returns the endpoint URL) and `stop()`.

    For assertions: `files()`, `commit_sha()`, `request_log` (method, raw path without query),
    `errors` (tracebacks of requests that crashed the server: should stay empty). For set-up:
    `put_files()` seeds a repo without going through the client.
    """

    def __init__(
        self,
        tokens: Mapping[str, str] | None = None,
        orgs: Mapping[str, Iterable[str]] | None = None,
        *,
        port: int = 0,
    ) -> None:
        self.tokens = dict(tokens or {})
        self.orgs = {org: set(members) for org, members in (orgs or {}).items()}
        self.port = port
        self.endpoint = ""
        self.request_log: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self._repos: dict[tuple[str, str], Repo] = {}
        self._lfs: dict[str, bytes] = {}  # sha256 -> content, uploaded through the LFS endpoints
        self._uploads: dict[str, tuple[str, int]] = {}  # one-time upload nonce -> (sha256, size)
        self._lock = threading.RLock()
        self._count = 0
        self._httpd: ThreadingHTTPServer | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> str:
        """Serve in a background thread; returns the endpoint, `http://127.0.0.1:PORT`."""
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        self.port = self._httpd.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        serve = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        serve.start()  # a short poll interval: stop() waits for it
        return self.endpoint

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HubServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- helpers for tests -----------------------------------------------------------------

    def files(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> dict:
        """The files of `repo_id` at `revision` (branch, tag or sha): path -> bytes."""
        with self._lock:
            repo = self._get(repo_type, repo_id)
            return {p: b.data for p, b in repo.commits[self._resolve(repo, revision)].files.items()}

    def commit_sha(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> str:
        with self._lock:
            repo = self._get(repo_type, repo_id)
            return self._resolve(repo, revision)

    def put_files(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        *,
        private: bool = False,
        owner: str | None = None,
        repo_type: str = "model",
        revision: str = "main",
        message: str = "Seed files",
    ) -> str:
        """Seed a repo directly (created if missing, owned by `owner` or its namespace).

        The files are added to (or replace files of) branch `revision`, made from main if
        missing. Returns the new commit's sha.
        """
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                repo = self._create(repo_type, repo_id, owner or repo_id.split("/")[0], private)
            if revision not in repo.branches:
                repo.branches[revision] = repo.branches["main"]
            head = repo.commits[repo.branches[revision]]
            blobs = {p: Blob(bytes(d), is_lfs(p, len(d))) for p, d in files.items()}
            commit = self._commit(repo, head, {**head.files, **blobs}, message, "", repo.owner)
            repo.branches[revision] = commit.sha
            return commit.sha

    # -- repo store ------------------------------------------------------------------------

    def _get(self, repo_type: str, repo_id: str) -> Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise KeyError(f"no {repo_type} repo {repo_id!r} on the test Hub")
        return repo

    def _create(self, repo_type: str, repo_id: str, owner: str, private: bool) -> Repo:
        repo = Repo(repo_type, repo_id, owner, private)
        self._repos[(repo_type, repo_id)] = repo
        files = {".gitattributes": Blob(GITATTRIBUTES, lfs=False)}
        repo.branches["main"] = self._commit(repo, None, files, "initial commit", "", owner).sha
        return repo

    def _commit(self, repo, parent, files, title, message, author) -> Commit:
        self._count += 1
        tree = "\n".join(f"{p} {b.oid}" for p, b in sorted(files.items()))
        seed = f"{self._count}\0{repo.id}\0{parent and parent.sha}\0{title}\0{tree}"
        sha = hashlib.sha1(seed.encode()).hexdigest()
        commit = Commit(sha, parent and parent.sha, dict(files), title, message, author, _now())
        repo.commits[sha] = commit
        return commit

    def _resolve(self, repo: Repo, revision: str) -> str:
        """Branch, tag, refs/heads/x, refs/tags/x, full sha or a unique sha prefix -> sha."""
        name = revision.removeprefix("refs/heads/").removeprefix("refs/tags/")
        for refs in (repo.branches, repo.tags):
            if name in refs:
                return refs[name]
        pr = re.fullmatch(r"refs/pr/(\d+)", revision)
        if pr and int(pr.group(1)) in repo.pull_requests:
            return repo.pull_requests[int(pr.group(1))]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            found = [sha for sha in repo.commits if sha.startswith(revision)]
            if len(found) == 1:
                return found[0]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _member(self, user: str | None, namespace: str) -> bool:
        return user is not None and (user == namespace or user in self.orgs.get(namespace, ()))

    def _require_write(self, user: str | None, namespace: str, what: str) -> None:
        if user is None:
            raise HubError(401, f"You must be authenticated to {what}")
        if not self._member(user, namespace):
            raise HubError(403, f"You don't have the rights to {what} in namespace {namespace}")

    def _repo(self, req: Request, repo_type: str, repo_id: str, *, write: bool = False) -> Repo:
        """The repo if `req.user` may see it (and write to it), else the Hub's error."""
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self._member(req.user, repo.owner)):
            status = 401 if req.user is None else 404
            raise HubError(status, "Repository not found", "RepoNotFound")
        if write:
            self._require_write(req.user, repo.owner, f"write to {repo_id}")
        return repo

    # -- routing ---------------------------------------------------------------------------

    def _route(self, req: Request) -> Reply:
        s, m = req.segments, req.method
        if s[:1] == ["api"]:
            return self._route_api(req, s[1:])
        if s[:2] == ["_lfs", "upload"] and len(s) == 3 and m == "PUT":
            return self._lfs_upload(req, s[2])
        if s == ["_lfs", "verify"] and m == "POST":
            return self._lfs_verify(req)
        repo_type = "model"
        if s and s[0] in ("datasets", "spaces"):
            repo_type, s = REPO_TYPES[s[0]], s[1:]
        lfs_batch = ["info", "lfs", "objects", "batch"]
        if len(s) == 6 and s[1].endswith(".git") and s[2:] == lfs_batch and m == "POST":
            return self._lfs_batch(req, repo_type, f"{s[0]}/{s[1].removesuffix('.git')}")
        if len(s) >= 5 and s[2] == "resolve" and m in ("GET", "HEAD"):
            return self._download(req, repo_type, f"{s[0]}/{s[1]}", s[3], "/".join(s[4:]))
        raise HubError(404, f"Not found: {m} {req.path}")

    def _route_api(self, req: Request, s: list[str]) -> Reply:
        m = req.method
        if s == ["whoami-v2"] and m == "GET":
            return self._whoami(req)
        if s == ["validate-yaml"] and m == "POST":
            return _json({"errors": [], "warnings": []})
        if s == ["agent-harnesses"] and m == "GET":  # fetched once per process by the client
            return _json({"standardEnvVars": [], "harnesses": {}})
        if s == ["repos", "create"] and m == "POST":
            return self._create_repo(req)
        if s == ["repos", "delete"] and m == "DELETE":
            return self._delete_repo(req)
        if len(s) >= 3 and s[0] in REPO_TYPES:
            repo_type, repo_id, rest = REPO_TYPES[s[0]], f"{s[1]}/{s[2]}", s[3:]
            handler = self._repo_routes.get((m, rest[0] if rest else ""))
            if handler is not None:
                return handler(self, req, repo_type, repo_id, rest[1:])
        raise HubError(404, f"Not found: {m} {req.path}")

    # -- API: account and repos ------------------------------------------------------------

    def _whoami(self, req: Request) -> Reply:
        if req.user is None:
            raise HubError(401, "Authorization header is required")
        orgs = [
            {"type": "org", "name": o} for o, members in self.orgs.items() if req.user in members
        ]
        auth = {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}
        return _json(
            {
                "type": "user",
                "id": req.user,
                "name": req.user,
                "fullname": req.user,
                "orgs": orgs,
                "auth": auth,
            }
        )

    def _create_repo(self, req: Request) -> Reply:
        body = req.json()
        repo_type, name = body.get("type") or "model", str(body.get("name", ""))
        if repo_type not in URL_PREFIXES:
            raise HubError(400, f"Invalid repo type: {repo_type}")
        if not REPO_NAME.fullmatch(name) or "--" in name or ".." in name or len(name) > 96:
            raise HubError(400, f"Invalid repo name: {name!r}")
        namespace = body.get("organization") or req.user
        self._require_write(req.user, namespace or "", f"create a {repo_type}")
        repo_id = f"{namespace}/{name}"
        url = f"{self.endpoint}/{URL_PREFIXES[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self._repos:
            raise HubError(409, f"You already created this {repo_type} repo", url=url)
        private = body.get("visibility", "private" if body.get("private") else "public")
        self._create(repo_type, repo_id, namespace, private == "private")
        return _json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, req: Request) -> Reply:
        body = req.json()
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or req.user}/{body.get('name')}"
        self._repo(req, repo_type, repo_id, write=True)
        del self._repos[(repo_type, repo_id)]
        return _json({})

    # -- API: reading a repo ---------------------------------------------------------------

    def _info(self, req: Request, repo_type: str, repo_id: str, rest: list[str]) -> Reply:
        """GET /api/{type}s/{id} and /api/{type}s/{id}/revision/{rev}."""
        repo = self._repo(req, repo_type, repo_id)
        commit = repo.commits[self._resolve(repo, "/".join(rest) or "main")]
        siblings = []
        for path, blob in sorted(commit.files.items()):
            sibling = {"rfilename": path}
            if req.flag("blobs"):
                sibling.update(size=blob.size, blobId=blob.oid)
                if blob.lfs:
                    sibling["lfs"] = {
                        "sha256": blob.sha256,
                        "size": blob.size,
                        "pointerSize": len(blob.pointer),
                    }
            siblings.append(sibling)
        info = {
            "_id": repo_id,
            "id": repo_id,
            "author": repo.owner,
            "sha": commit.sha,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "createdAt": repo.created_at,
            "lastModified": commit.date,
            "siblings": siblings,
        }
        if repo_type == "model":
            info["modelId"] = repo_id
        return _json(info)

    def _tree(self, req: Request, repo_type: str, repo_id: str, rest: list[str]) -> Reply:
        """GET /api/{type}s/{id}/tree/{rev}[/{path}] (?recursive=true)."""
        if not rest:
            raise HubError(404, f"Not found: {req.method} {req.path}")
        repo = self._repo(req, repo_type, repo_id)
        files = repo.commits[self._resolve(repo, rest[0])].files
        path = "/".join(rest[1:]).strip("/")
        prefix = f"{path}/" if path else ""
        under = {p: b for p, b in files.items() if p.startswith(prefix)}
        if path and not under:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        entries, folders = [], set()
        for p, blob in under.items():
            parts = p[len(prefix) :].split("/")
            depth = len(parts) if req.flag("recursive") else 1
            folders.update(
                prefix + "/".join(parts[:i]) for i in range(1, min(depth, len(parts) - 1) + 1)
            )
            if len(parts) <= depth:
                entries.append(blob.tree_entry(p))
        entries += [self._folder_entry(files, f) for f in folders]
        return _json(sorted(entries, key=lambda e: (e["type"] != "directory", e["path"])))

    @staticmethod
    def _folder_entry(files: Mapping[str, Blob], folder: str) -> dict:
        content = "\n".join(
            f"{p} {b.oid}" for p, b in sorted(files.items()) if p.startswith(f"{folder}/")
        )
        return {
            "type": "directory",
            "path": folder,
            "oid": hashlib.sha1(content.encode()).hexdigest(),
        }

    def _paths_info(self, req: Request, repo_type: str, repo_id: str, rest: list[str]) -> Reply:
        """POST /api/{type}s/{id}/paths-info/{rev}, form data `paths=...&paths=...`."""
        repo = self._repo(req, repo_type, repo_id)
        files = repo.commits[self._resolve(repo, "/".join(rest) or "main")].files
        entries = []
        for path in parse_qs(req.body.decode()).get("paths", []):
            path = path.strip("/")
            if path in files:
                entries.append(files[path].tree_entry(path))
            elif any(p.startswith(f"{path}/") for p in files):
                entries.append(self._folder_entry(files, path))
        return _json(entries)

    def _refs(self, req: Request, repo_type: str, repo_id: str, rest: list[str]) -> Reply:
        repo = self._repo(req, repo_type, repo_id)

        def refs(names: dict[str, str], kind: str) -> list[dict]:
            return [
                {"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": sha}
                for n, sha in sorted(names.items())
            ]

        return _json(
            {
                "branches": refs(repo.branches, "heads"),
                "tags": refs(repo.tags, "tags"),
                "converts": [],
                "pullRequests": [
                    {"name": str(n), "ref": f"refs/pr/{n}", "targetCommit": sha}
                    for n, sha in sorted(repo.pull_requests.items())
                ],
            }
        )

    def _commits(self, req: Request, repo_type: str, repo_id: str, rest: list[str]) -> Reply:
        """GET /api/{type}s/{id}/commits/{rev}: the history, newest first."""
        repo = self._repo(req, repo_type, repo_id)
        sha, history = self._resolve(repo, "/".join(rest) or "main"), []
        while sha is not None:
            c = repo.commits[sha]
            history.append(
                {
                    "id": c.sha,
                    "title": c.title,
                    "message": c.message,
                    "authors": [{"user": c.author}],
                    "date": c.date,
                }
            )
            sha = c.parent
        return _json(history)

    def _download(self, req: Request, repo_type: str, repo_id: str, rev: str, path: str) -> Reply:
        """GET/HEAD /{prefix}{id}/resolve/{rev}/{path}, with single byte Ranges."""
        repo = self._repo(req, repo_type, repo_id)
        sha = self._resolve(repo, rev)
        blob = repo.commits[sha].files.get(path)
        if blob is None:
            raise HubError(404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": sha})
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": sha,
            "ETag": f'"{blob.etag}"',
            "Accept-Ranges": "bytes",
        }
        ranged = re.fullmatch(r"bytes=(\d*)-(\d*)", req.headers.get("Range", "").strip())
        if req.method == "GET" and ranged and ranged.group(1) + ranged.group(2):
            first, last = ranged.groups()
            start = int(first) if first else max(blob.size - int(last), 0)
            end = min(int(last), blob.size - 1) if first and last else blob.size - 1
            if start >= blob.size or start > end:
                raise HubError(
                    416, "Range not satisfiable", headers={"Content-Range": f"bytes */{blob.size}"}
                )
            headers["Content-Range"] = f"bytes {start}-{end}/{blob.size}"
            return Reply(206, blob.data[start : end + 1], headers)
        return Reply(200, blob.data, headers)

    # -- API: writing a repo ---------------------------------------------------------------

    def _preupload(self, req: Request, repo_type: str, repo_id: str, rest: list[str]) -> Reply:
        """POST /api/{type}s/{id}/preupload/{rev}: regular or LFS, and the current oid."""
        repo = self._contributable(req, repo_type, repo_id)
        head = repo.commits[self._resolve(repo, "/".join(rest) or "main")]
        answers = []
        for f in req.json().get("files", []):
            path, lfs = f["path"], is_lfs(f["path"], int(f.get("size", 0)))
            old = head.files.get(path)
            oid = None if old is None else (old.sha256 if old.lfs else old.oid)
            answers.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        return _json({"files": answers, "commitOid": head.sha})

    def _create_commit(self, req: Request, repo_type: str, repo_id: str, rest: list[str]) -> Reply:
        """POST /api/{type}s/{id}/commit/{branch}: NDJSON of a header, then one line per change."""
        repo = self._contributable(req, repo_type, repo_id)
        branch = "/".join(rest).removeprefix("refs/heads/")
        if branch not in repo.branches:
            self._resolve(repo, branch)  # unknown revision: 404 RevisionNotFound
            raise HubError(400, f"Can only commit to a branch, not to {branch!r}")
        lines = [json.loads(line) for line in req.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line of a commit must be its header")
        header, head = lines[0]["value"], repo.commits[repo.branches[branch]]
        if header.get("parentCommit") not in (None, head.sha):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head.files)
        for line in lines[1:]:
            self._apply(files, line.get("key"), line.get("value", {}))
        commit = self._commit(
            repo,
            head,
            files,
            header.get("summary") or "Commit",
            header.get("description") or "",
            req.user,
        )
        reply = {
            "success": True,
            "commitOid": commit.sha,
            "hookOutput": "",
            "commitUrl": f"{self.endpoint}/{repo.url_path}/commit/{commit.sha}",
        }
        if req.flag("create_pr"):  # the branch stays; the commit heads a new pull request
            number = len(repo.pull_requests) + 1
            repo.pull_requests[number] = commit.sha
            reply["pullRequestUrl"] = f"{self.endpoint}/{repo.url_path}/discussions/{number}"
        else:
            repo.branches[branch] = commit.sha
        return _json(reply)

    def _apply(self, files: dict[str, Blob], key: str | None, value: dict) -> None:
        path = str(value.get("path", "")).strip("/")
        if not path or ".." in path.split("/"):
            raise HubError(400, f"Invalid path in commit: {path!r}")
        if key == "file":
            files[path] = Blob(base64.b64decode(value["content"]), lfs=False)
        elif key == "lfsFile":
            data = self._lfs.get(value.get("oid", ""))
            if data is None or value.get("size", len(data)) != len(data):
                raise HubError(400, f"LFS object {value.get('oid')} was not uploaded ({path})")
            files[path] = Blob(data, lfs=True)
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        elif key == "deletedFolder":
            doomed = [p for p in files if p.startswith(f"{path}/")]
            if not doomed:
                raise HubError(
                    404, f"A folder with this name doesn't exist: {path}", "EntryNotFound"
                )
            for p in doomed:
                del files[p]
        else:
            raise HubError(400, f"Unknown commit operation: {key!r}")

    def _contributable(self, req: Request, repo_type: str, repo_id: str) -> Repo:
        """Committing needs write access; opening a pull request (``?create_pr=1``) only a
        signed-in user who can see the repo, as on the Hub."""
        if not req.flag("create_pr"):
            return self._repo(req, repo_type, repo_id, write=True)
        if req.user is None:
            raise HubError(401, "Authentication required to open a pull request")
        return self._repo(req, repo_type, repo_id)

    def _branch(self, req: Request, repo_type: str, repo_id: str, rest: list[str]) -> Reply:
        """POST (body: optional startingPoint) or DELETE /api/{type}s/{id}/branch/{name}."""
        repo, name = self._repo(req, repo_type, repo_id, write=True), "/".join(rest)
        if req.method == "DELETE":
            if name not in repo.branches:
                raise HubError(404, f"Invalid rev id: {name}", "RevisionNotFound")
            if name == "main":
                raise HubError(403, "Cannot delete the default branch")
            del repo.branches[name]
            return _json({})
        if not name or name in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{name}")
        repo.branches[name] = self._resolve(repo, req.json().get("startingPoint") or "main")
        return _json({})

    def _tag(self, req: Request, repo_type: str, repo_id: str, rest: list[str]) -> Reply:
        """POST /api/{type}s/{id}/tag/{rev} (body: tag, message) or DELETE .../tag/{name}."""
        repo = self._repo(req, repo_type, repo_id, write=True)
        if req.method == "DELETE":
            if repo.tags.pop("/".join(rest), None) is None:
                raise HubError(404, f"Invalid rev id: {'/'.join(rest)}", "RevisionNotFound")
            return _json({})
        sha, tag = self._resolve(repo, "/".join(rest) or "main"), req.json().get("tag", "")
        if not tag or tag in repo.tags:
            raise HubError(409, f"Tag already exists: {tag}")
        repo.tags[tag] = sha
        return _json({})

    # -- LFS: batch, upload to a one-time URL, verify --------------------------------------

    def _lfs_batch(self, req: Request, repo_type: str, repo_id: str) -> Reply:
        # the batch call does not say whether the upload is for a pull request: any signed-in
        # user who can see the repo may upload objects (a commit still needs the rights)
        if req.user is None:
            raise HubError(401, "Authentication required to upload")
        self._repo(req, repo_type, repo_id)
        body = req.json()
        if body.get("operation") != "upload":
            raise HubError(400, "The test Hub only supports LFS uploads")
        objects = []
        for obj in body.get("objects", []):
            oid, size = str(obj["oid"]), int(obj["size"])
            entry: dict = {"oid": oid, "size": size}
            if oid not in self._lfs:  # present already: no actions, the client skips the upload
                nonce = secrets.token_urlsafe(16)
                self._uploads[nonce] = (oid, size)
                entry["actions"] = {
                    "upload": {"href": f"{self.endpoint}/_lfs/upload/{nonce}"},
                    "verify": {"href": f"{self.endpoint}/_lfs/verify"},
                }
            objects.append(entry)
        headers = {"Content-Type": "application/vnd.git-lfs+json"}
        return _json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}, 200, headers)

    def _lfs_upload(self, req: Request, nonce: str) -> Reply:
        """PUT to the href of a batch: the URL is the credential (no Authorization is sent)."""
        if nonce not in self._uploads:
            raise HubError(403, "Upload URL is invalid or was used already")
        oid, size = self._uploads.pop(nonce)
        if len(req.body) != size or hashlib.sha256(req.body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match oid {oid} and size {size}")
        self._lfs[oid] = req.body
        return Reply(200)

    def _lfs_verify(self, req: Request) -> Reply:
        if req.user is None:
            raise HubError(401, "Authorization header is required")
        body = req.json()
        data = self._lfs.get(str(body.get("oid")))
        if data is None or len(data) != body.get("size"):
            raise HubError(404, f"LFS object {body.get('oid')} not found")
        return _json({"success": True})

    _repo_routes: ClassVar[dict] = {
        ("GET", ""): _info,
        ("GET", "revision"): _info,
        ("GET", "tree"): _tree,
        ("GET", "refs"): _refs,
        ("GET", "commits"): _commits,
        ("POST", "paths-info"): _paths_info,
        ("POST", "preupload"): _preupload,
        ("POST", "commit"): _create_commit,
        ("POST", "branch"): _branch,
        ("DELETE", "branch"): _branch,
        ("POST", "tag"): _tag,
        ("DELETE", "tag"): _tag,
    }


class _Handler(BaseHTTPRequestHandler):
    """HTTP plumbing: read the whole body, authenticate, route under the lock, reply."""

    protocol_version = "HTTP/1.1"  # keep-alive: every reply carries a Content-Length
    timeout = 60  # an idle keep-alive connection frees its thread after this

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def log_message(self, format, *args) -> None:  # quiet: tests read hub.request_log
        pass

    def _handle(self) -> None:
        hub: HubServer = self.server.hub  # type: ignore[attr-defined]
        body = self._read_body()  # always drained, even when the reply is an error
        url = urlsplit(self.path)
        hub.request_log.append((self.command, url.path))
        try:
            with hub._lock:
                user = self._user(hub)
                segments = [unquote(s) for s in url.path.split("/")[1:]]
                req = Request(
                    self.command, url.path, segments, parse_qs(url.query), self.headers, body, user
                )
                reply = hub._route(req)
        except HubError as e:
            reply = e.reply()
        except Exception:
            hub.errors.append(traceback.format_exc())
            reply = HubError(500, "Internal error of the test Hub (see HubServer.errors)").reply()
        self._send(reply)

    def _user(self, hub: HubServer) -> str | None:
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        user = hub.tokens.get(auth.removeprefix("Bearer ").strip())
        if user is None:
            raise HubError(401, INVALID_TOKEN)
        return user

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers, up to the blank line
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)


# -- pointing huggingface_hub at a test server ---------------------------------------------

# Environment variables that would override or defeat ours (None: unset).
_ENV_UNSET = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_ASSETS_CACHE",
    "HF_XET_CACHE",
    "HF_OIDC_RESOURCE",
    "HUGGINGFACE_CO_STAGING",
)


def _endpoint_of(server: HubServer | str) -> str:
    return (server.endpoint if isinstance(server, HubServer) else server).rstrip("/")


def _env_overrides(endpoint: str, token: str | None, home: str | os.PathLike) -> dict:
    env: dict[str, str | None] = dict.fromkeys(_ENV_UNSET)
    env.update(
        HF_ENDPOINT=endpoint,
        HF_TOKEN=token,
        HF_HOME=str(home),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_UPDATE_CHECK="1",
    )
    return env


def hub_environ(
    server: HubServer | str,
    token: str | None,
    home: str | os.PathLike,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A full environment (`base`, default os.environ, plus ours) for a subprocess to use the
    test Hub: HF_ENDPOINT, HF_TOKEN (unset when None), HF_HOME=home, HF_HUB_DISABLE_XET=1, and
    no HF_HUB_OFFLINE (it would block 127.0.0.1 too)."""
    env = dict(os.environ if base is None else base)
    _update_env(env, _env_overrides(_endpoint_of(server), token, home))
    return env


def _update_env(env: MutableMapping[str, str], values: Mapping[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value


def _client_patches(endpoint: str, home: str) -> list[tuple[object, str, object]]:
    """(object, attribute, value) for every copy of a setting huggingface_hub froze at import."""
    import huggingface_hub
    import huggingface_hub.hf_api
    import huggingface_hub.utils._cache_assets
    import huggingface_hub.utils._cache_manager
    import huggingface_hub.utils._git_credential
    import huggingface_hub.utils._http as http
    from huggingface_hub import constants

    cache, assets = os.path.join(home, "hub"), os.path.join(home, "assets")
    parts = urlsplit(endpoint)
    host, origin = parts.hostname or "127.0.0.1", f"{parts.scheme}://{parts.netloc}"
    settings = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {host},
        "HF_HOME": home,
        "HF_HUB_CACHE": cache,
        "HUGGINGFACE_HUB_CACHE": cache,
        "HF_ASSETS_CACHE": assets,
        "HUGGINGFACE_ASSETS_CACHE": assets,
        "HF_XET_CACHE": os.path.join(home, "xet"),
        "HF_TOKEN_PATH": os.path.join(home, "token"),
        "HF_STORED_TOKENS_PATH": os.path.join(home, "stored_tokens"),
        "AGENT_HARNESSES_PATH": os.path.join(home, ".agent_harnesses.json"),
        "CHECK_FOR_UPDATE_DONE_PATH": os.path.join(home, ".check_for_update_done"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
    }
    patches: list[tuple[object, str, object]] = [(constants, k, v) for k, v in settings.items()]
    patches += [
        (huggingface_hub.hf_api.api, "endpoint", endpoint),  # the HfApi behind create_repo() etc.
        (huggingface_hub.utils._cache_manager, "HF_HUB_CACHE", cache),
        (huggingface_hub.utils._cache_assets, "HF_ASSETS_CACHE", assets),
        (huggingface_hub.utils._git_credential, "ENDPOINT", endpoint),
        (http, "_HUB_ORIGINS", http._HUB_ORIGINS | {origin}),
        (huggingface_hub, "HUGGINGFACE_CO_URL_TEMPLATE", settings["HUGGINGFACE_CO_URL_TEMPLATE"]),
    ]
    transformers_hub = sys.modules.get("transformers.utils.hub")
    if transformers_hub is not None:  # its shared HfApi keeps the endpoint it was made with
        patches.append((transformers_hub, "_hf_api", None))
    datasets_config = sys.modules.get("datasets.config")  # only if imported already: it is slow
    if datasets_config is not None:
        datasets_url = endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"
        patches += [
            (datasets_config, "HF_ENDPOINT", endpoint),
            (datasets_config, "HUB_DATASETS_URL", datasets_url),
            (datasets_config, "HF_HUB_OFFLINE", False),
        ]
    return [(obj, name, value) for obj, name, value in patches if name in vars(obj)]


@contextlib.contextmanager
def hub_env(server: HubServer | str, token: str | None, home: str | os.PathLike) -> Iterator[Path]:
    """Point this process's `huggingface_hub` at `server` (a HubServer or an endpoint URL).

    Sets the env vars of `hub_environ()` and patches the settings huggingface_hub froze at import
    (constants.ENDPOINT, HF_HUB_CACHE, ..., the module-level HfApi behind `create_repo()` etc.,
    datasets.config if imported), so it works whether or not huggingface_hub was imported before.
    `token=None` means anonymous (no token file is read either: HF_HOME is `home`). Make HfApi
    objects inside the block: one made before keeps its endpoint. Yields the cache dir,
    `home/hub`; everything is restored on exit and pooled client connections are dropped.
    """
    from huggingface_hub.utils._http import close_session

    endpoint, home = _endpoint_of(server), os.path.abspath(home)
    patches = _client_patches(endpoint, home)  # imports the client before the env changes
    overrides = _env_overrides(endpoint, token, home)
    saved_env = {name: os.environ.get(name) for name in overrides}
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    close_session()  # no pooled connection from before may be reused
    try:
        _update_env(os.environ, overrides)
        for obj, name, value in patches:
            setattr(obj, name, value)
        yield Path(home) / "hub"
    finally:
        close_session()  # keep-alive connections to a test server that is about to stop
        for obj, name, value in saved:
            setattr(obj, name, value)
        _update_env(os.environ, saved_env)
