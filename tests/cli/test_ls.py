"""adaptool ls: what adaptool made or pulled here, from the local index."""

from __future__ import annotations

import json

from tests.helpers import (
    cli,
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
