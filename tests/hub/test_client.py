"""Hub errors as one paragraph: wrong token, missing or private repo, missing revision, an
endpoint that never answers, a web page where the Hub should be, a hostile listing."""

from __future__ import annotations

import pytest

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


def test_an_endpoint_that_never_answers_times_out_and_its_credentials_are_not_echoed(
    plugins, tmp_path, monkeypatch
):
    """A Hub that accepts the connection and then says nothing: bounded retries, a clear
    error, and the user:password in HF_ENDPOINT never printed."""
    import socket
    import threading
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held = []

    def accept_and_hold():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept_and_hold, daemon=True).start()
    monkeypatch.setenv("ADAPTOOL_HUB_TIMEOUT", "0.5")
    monkeypatch.setattr("adaptool.hub.client.BACKOFF", 0.05)
    port = listener.getsockname()[1]
    endpoint = f"http://carol:s3cret-pass@127.0.0.1:{port}"
    started = time.monotonic()
    try:
        with hub_env(endpoint, GOOD, tmp_path / "home"):
            result = cli(plugins, "pull", "alice/tagger")
    finally:
        listener.close()
        for conn in held:
            conn.close()
    assert time.monotonic() - started < 30
    assert result.exit_code == 2, result.output
    assert "could not reach the Hub" in result.output and "Timeout" in result.output
    assert "s3cret-pass" not in result.output and "***@127.0.0.1" in result.output
    assert len(held) == 3  # the first try and two retries


def test_redact_hides_credentials_in_any_url():
    from adaptool.hub.client import redact

    assert (
        redact("for url: https://u:p@hub.example/api x") == "for url: https://***@hub.example/api x"
    )
    assert redact("no url here") == "no url here"


@pytest.fixture
def web_page():
    """A web server where the Hub should be: every answer is an HTML page with status 200 (a
    proxy's login page, say). No Hub server can stand in for this one."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html><body>Please log in to the proxy</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_web_page_where_the_hub_should_be(web_page, plugins, tmp_path):
    with hub_env(web_page, GOOD, tmp_path / "home"):
        page = cli(plugins, "pull", "alice/tagger")
    assert page.exit_code == 2 and "not the Hub's API" in page.output, page.output
    assert "Traceback" not in page.output


def test_a_listing_whose_names_climb_out_of_the_folder_is_refused(hub, plugins, tmp_path):
    """A hostile repo on the test Hub: names with '..' and backslashes; nothing downloaded."""
    for i, name in enumerate(("../../.bashrc", "..\\..\\evil.json")):
        config = b'{"peft_type": "LORA"}'
        hub.put_files(f"alice/escape{i}", {"adapter_config.json": config, name: b"x"})
        with hub_env(hub, GOOD, tmp_path / "home"):
            hostile = cli(plugins, "pull", f"alice/escape{i}", "--output", tmp_path / "p")
        assert hostile.exit_code == 2 and "could escape its folder" in hostile.output, name
        assert "Traceback" not in hostile.output
        assert not (tmp_path / "p").exists() and not (tmp_path.parent / ".bashrc").exists()
