"""`adaptool serve` as a user runs it: it says where it serves (never the key), answers on
127.0.0.1, and stops on Ctrl-C; nothing to serve is a one-paragraph error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx2 as httpx

from adaptool.serving.server import free_port
from tests.helpers import trained


def test_serve_answers_on_localhost_and_stops_on_ctrl_c(tmp_path, tiny_bloom_dir, registry):
    adapter = trained(tmp_path, tiny_bloom_dir, name="tagger")
    port, key = free_port(), "sk-cli-secret-77"
    env = dict(os.environ, ADAPTOOL_API_KEY=key)
    command = [sys.executable, "-m", "adaptool", "serve", str(adapter), "--port", str(port)]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline, health = time.monotonic() + 120, None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health").json()
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert health == {"status": "ok", "adapters": 1}
        reply = httpx.post(
            f"http://127.0.0.1:{port}/v1/completions",
            json={"model": "tagger", "prompt": "“Hi.” ->:", "max_tokens": 4},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    assert f"http://127.0.0.1:{port}/" in out and "API key: required" in out
    assert key not in out + err and "Traceback" not in err


def test_nothing_to_serve_is_refused(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "adaptool", "serve"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "nothing to serve" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_port_in_use_is_refused_before_anything_loads(tiny_bloom_dir):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "adaptool",
                "serve",
                "--base",
                str(tiny_bloom_dir),
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "--port" in done.stderr and "Traceback" not in done.stderr
    assert "serving" not in done.stdout
