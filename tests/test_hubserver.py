"""The test Hub (tests/hubserver.py) works with the real huggingface_hub client over HTTP."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.hubserver import GITATTRIBUTES, LFS_THRESHOLD, HubServer, hub_env, hub_environ

ALICE, BOB = "hf_alice_token", "hf_bob_token"
# huggingface_hub's LFS upload passes a file as httpx2 `data=`, which httpx2 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=:DeprecationWarning")


@pytest.fixture
def hub():
    with HubServer(tokens={ALICE: "alice", BOB: "bob"}, orgs={"lab": ["alice"]}) as server:
        yield server
    assert server.errors == []


@pytest.fixture
def alice(hub: HubServer, tmp_path: Path):
    """huggingface_hub pointed at the test Hub with alice's token and a fresh HF_HOME."""
    with hub_env(hub, ALICE, tmp_path / "alice-home"):
        yield HfApi()


def snapshot(revision: str, cache: Path) -> dict[str, bytes]:
    folder = Path(snapshot_download("alice/demo", revision=revision, cache_dir=cache))
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_upload_branch_tag_and_download_round_trip(hub: HubServer, alice: HfApi, tmp_path: Path):
    weights = os.urandom(10 * 1024 * 1024 + 17)
    folder = tmp_path / "adapter"
    (folder / "sub").mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"r": 8}')
    (folder / "sub" / "weights.bin").write_bytes(weights)

    url = alice.create_repo("alice/demo", private=True)
    assert url.repo_id == "alice/demo" and url.endswith("/alice/demo")
    assert alice.create_repo("alice/demo", exist_ok=True).repo_id == "alice/demo"
    with pytest.raises(HfHubHTTPError) as conflict:
        alice.create_repo("alice/demo")
    assert conflict.value.response.status_code == 409
    main = alice.upload_folder(repo_id="alice/demo", folder_path=folder).oid
    # the big file went through LFS: a batch call, then a PUT to the one-time URL it gave
    assert ("POST", "/alice/demo.git/info/lfs/objects/batch") in hub.request_log
    assert any(m == "PUT" and p.startswith("/_lfs/upload/") for m, p in hub.request_log)

    alice.create_branch("alice/demo", branch="exp/v2")
    alice.upload_file(
        path_or_fileobj=b"# demo\n",
        path_in_repo="README.md",
        repo_id="alice/demo",
        revision="exp/v2",
    )
    alice.create_tag("alice/demo", tag="v1")
    with pytest.raises(HfHubHTTPError) as conflict:
        alice.create_tag("alice/demo", tag="v1")
    assert conflict.value.response.status_code == 409

    expected = hub.files("alice/demo")
    assert expected == {
        ".gitattributes": GITATTRIBUTES,
        "adapter_config.json": b'{"r": 8}',
        "sub/weights.bin": weights,
    }
    assert snapshot("v1", tmp_path / "c1") == expected
    assert snapshot(main, tmp_path / "c2") == expected
    assert snapshot("exp/v2", tmp_path / "c3") == {**expected, "README.md": b"# demo\n"}
    assert Path(hf_hub_download("alice/demo", "sub/weights.bin")).read_bytes() == weights

    refs = alice.list_repo_refs("alice/demo")
    assert {b.name: b.target_commit for b in refs.branches}["main"] == main
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", main)]
    info = alice.model_info("alice/demo", files_metadata=True)
    assert info.private and info.sha == main
    lfs = {s.rfilename: s.lfs for s in info.siblings}
    assert lfs["sub/weights.bin"].size == len(weights) and lfs["adapter_config.json"] is None
    tree = {f.path for f in alice.list_repo_tree("alice/demo", recursive=True)}
    assert tree == {".gitattributes", "adapter_config.json", "sub", "sub/weights.bin"}
    history = alice.list_repo_commits("alice/demo", revision="exp/v2")
    assert [c.title for c in history][-1] == "initial commit" and history[1].commit_id == main


def test_commits_delete_files_and_refuse_a_stale_parent(hub: HubServer, alice: HfApi):
    alice.create_repo("lab/models")  # alice is a member of the org
    first = alice.upload_file(path_or_fileobj=b"1", path_in_repo="a/one.txt", repo_id="lab/models")
    alice.create_commit("lab/models", [CommitOperationAdd("a/two.txt", b"2")], commit_message="two")
    with pytest.raises(HfHubHTTPError) as stale:
        alice.create_commit(
            "lab/models",
            [CommitOperationAdd("x", b"x")],
            commit_message="x",
            parent_commit=first.oid,
        )
    assert stale.value.response.status_code == 412
    with pytest.raises(EntryNotFoundError):
        alice.create_commit("lab/models", [CommitOperationDelete("nope.txt")], commit_message="d")
    alice.create_commit("lab/models", [CommitOperationDelete("a/")], commit_message="rm a/")
    assert set(hub.files("lab/models")) == {".gitattributes"}
    assert hub.files("lab/models", first.oid) == {
        ".gitattributes": GITATTRIBUTES,
        "a/one.txt": b"1",
    }
    # module-level functions use the HfApi instance made at import: hub_env patches it too
    assert huggingface_hub.whoami()["name"] == "alice"
    assert huggingface_hub.file_exists("lab/models", ".gitattributes")


def test_error_mapping(hub: HubServer, tmp_path: Path):
    hub.put_files("alice/public", {"a.txt": b"hi"})
    hub.put_files("alice/secret", {"a.txt": b"hush"}, private=True)

    with hub_env(hub, "hf_wrong", tmp_path / "wrong"):
        for call in (
            lambda: snapshot_download("alice/public"),
            lambda: hf_hub_download("alice/public", "a.txt"),
            lambda: HfApi().model_info("alice/public"),
        ):
            with pytest.raises(HfHubHTTPError, match="Invalid credentials in Authorization header"):
                call()

    with hub_env(hub, None, tmp_path / "anonymous"):
        assert Path(hf_hub_download("alice/public", "a.txt")).read_bytes() == b"hi"
        with pytest.raises(RepositoryNotFoundError):
            snapshot_download("alice/secret")
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("alice/secret", "a.txt")

    with hub_env(hub, BOB, tmp_path / "bob"):
        with pytest.raises(RepositoryNotFoundError):  # not his: private repos are invisible
            snapshot_download("alice/secret")
        with pytest.raises(RepositoryNotFoundError):
            snapshot_download("alice/missing")
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("alice/missing", "a.txt")
        with pytest.raises(RevisionNotFoundError):
            snapshot_download("alice/public", revision="no-such-branch")
        with pytest.raises(RevisionNotFoundError):
            hf_hub_download("alice/public", "a.txt", revision="no-such-branch")
        with pytest.raises(EntryNotFoundError):
            hf_hub_download("alice/public", "missing.txt")
        for write in (
            lambda: HfApi().create_repo("alice/new"),
            lambda: HfApi().upload_file(
                path_or_fileobj=b"x", path_in_repo="x", repo_id="alice/public"
            ),
        ):
            with pytest.raises(HfHubHTTPError) as forbidden:
                write()
            assert forbidden.value.response.status_code == 403
    assert hub.files("alice/public") == {".gitattributes": GITATTRIBUTES, "a.txt": b"hi"}


def test_seeded_repo_and_lfs_rules(hub: HubServer, alice: HfApi):
    big = b"\0" * LFS_THRESHOLD
    sha = hub.put_files("bob/legacy", {"pytorch_model.bin": b"PK pickle", "notes.txt": big})
    assert hub.commit_sha("bob/legacy") == sha
    files = {f.path: f for f in alice.list_repo_tree("bob/legacy")}
    assert files["pytorch_model.bin"].lfs is not None and files["notes.txt"].lfs is not None
    assert files[".gitattributes"].lfs is None
    assert Path(hf_hub_download("bob/legacy", "pytorch_model.bin")).read_bytes() == b"PK pickle"


def test_range_requests_and_resolve_headers(hub: HubServer):
    sha = hub.put_files("alice/r", {"data.txt": b"0123456789"})
    url = f"{hub.endpoint}/alice/r/resolve/main/data.txt"
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as head:
        assert head.headers["X-Repo-Commit"] == sha and head.headers["Content-Length"] == "10"
    for header, status, body in (
        ("bytes=2-4", 206, b"234"),
        ("bytes=7-", 206, b"789"),
        ("bytes=-2", 206, b"89"),
    ):
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": header})) as r:
            assert (r.status, r.read()) == (status, body)


def test_hub_env_restores_the_client_and_the_environment(hub: HubServer, tmp_path: Path):
    before = (hf_constants.ENDPOINT, hf_constants.HF_HUB_CACHE, huggingface_hub.hf_api.api.endpoint)
    env_before = {k: os.environ.get(k) for k in ("HF_ENDPOINT", "HF_TOKEN", "HF_HOME")}
    with hub_env(hub, ALICE, tmp_path / "home") as cache:
        assert hf_constants.ENDPOINT == hub.endpoint == os.environ["HF_ENDPOINT"]
        assert hf_constants.HF_HUB_CACHE == str(cache) == str(tmp_path / "home" / "hub")
        assert os.environ["HF_TOKEN"] == ALICE and "HF_HUB_OFFLINE" not in os.environ
    assert (
        hf_constants.ENDPOINT,
        hf_constants.HF_HUB_CACHE,
        huggingface_hub.hf_api.api.endpoint,
    ) == before
    assert {k: os.environ.get(k) for k in env_before} == env_before


def test_hub_environ_for_a_subprocess(hub: HubServer, tmp_path: Path):
    hub.put_files("alice/secret", {"a": b"from a subprocess"}, private=True)
    code = "import huggingface_hub as h; print(open(h.hf_hub_download('alice/secret', 'a')).read())"
    env = hub_environ(hub, ALICE, tmp_path / "home", base={**os.environ, "HF_HUB_OFFLINE": "1"})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "from a subprocess"


def test_chunked_bodies_are_read_and_connections_kept_alive(hub: HubServer):
    """Bodies are drained whatever the reply, so the next request on the connection works."""
    hub.put_files("alice/r", {"a.txt": b"hi"})
    conn = http.client.HTTPConnection("127.0.0.1", hub.port)
    chunks = iter([b'{"content": "---\\n', b'---\\n"}'])
    conn.request("POST", "/api/validate-yaml", body=chunks, encode_chunked=True)
    assert json.loads(conn.getresponse().read()) == {"errors": [], "warnings": []}
    conn.request("POST", "/api/no-such-endpoint", body=b"x" * 100_000)
    reply = conn.getresponse()
    assert reply.status == 404 and reply.getheader("Content-Length") == str(len(reply.read()))
    conn.request("GET", "/api/models/alice/r")
    assert json.loads(conn.getresponse().read())["id"] == "alice/r"
    conn.close()
