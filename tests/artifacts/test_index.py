"""The local index of what adaptool made or pulled: one JSON line per output, newest per path."""

from __future__ import annotations

from adaptool.artifacts import index


def test_record_then_entries_newest_per_path_and_missing_folders_left_out(tmp_path):
    kept, gone = tmp_path / "kept", tmp_path / "gone"
    kept.mkdir()
    index.record(index.Entry(path=str(kept), kind="adapter", source="trained", method="lora"))
    index.record(index.Entry(path=str(gone), kind="merged", source="merged"))
    index.record(index.Entry(path=str(kept), kind="adapter", source="trained", method="ia3"))
    found = index.entries()
    assert [(e.path, e.method) for e in found] == [(str(kept), "ia3")]
    assert {e.path for e in index.entries(include_missing=True)} == {str(kept), str(gone)}


def test_pulled_finds_a_revision_by_name_or_sha_prefix(tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    sha = "0123456789abcdef" * 2 + "01234567"
    entry = index.Entry(
        path=str(copy), kind="adapter", source="pulled", repo_id="a/b", revision="main", sha=sha
    )
    index.record(entry)
    assert index.pulled("a/b").sha == sha  # no revision means main
    assert index.pulled("a/b", sha[:8]).path == str(copy)
    assert index.pulled("a/b", "exp") is None and index.pulled("a/c") is None
    assert index.pulled("a/b", sha[:4]) is None  # too short to be a sha prefix


def test_record_output_from_a_manifest(tmp_path):
    from adaptool.artifacts.layout import Kind
    from adaptool.artifacts.manifest import BaseModelRecord, new_manifest

    out = tmp_path / "merged"
    out.mkdir()
    manifest = new_manifest(
        Kind.MERGED,
        BaseModelRecord(name="/models/base"),
        adapter={"path": "/runs/a", "peft_type": "PeftType.LORA"},
    )
    index.record_output(out, manifest, "merged")
    [entry] = index.entries()
    assert (entry.kind, entry.source, entry.base, entry.method) == (
        "merged",
        "merged",
        "/models/base",
        "lora",
    )
    assert entry.created == manifest.created


def test_an_unwritable_home_never_fails_the_command(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ADAPTOOL_HOME", str(blocker / "home"))
    index.record(index.Entry(path=str(tmp_path), kind="adapter", source="trained"))
    assert index.entries() == []
