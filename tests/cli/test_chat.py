"""`adaptool chat` in a terminal: a reply per line typed, /reset, and /exit."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import trained


def test_chat_replies_turn_by_turn_and_exits(tmp_path, tiny_bloom_dir, registry):
    adapter = trained(tmp_path, tiny_bloom_dir, name="tagger")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "adaptool",
            "chat",
            str(adapter),
            "--temperature",
            "0",
            "--max-tokens",
            "6",
        ],
        input="hello\n/reset\nagain\n/exit\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "chatting with tagger" in done.stdout and "(a new conversation)" in done.stdout
    assert done.stdout.count("> ") >= 3 and "Traceback" not in done.stderr
