"""Talking to the Hugging Face Hub through ``huggingface_hub`` at ``HF_ENDPOINT`` (the real Hub
unless set): its errors and the network's turned into one-paragraph HubErrors, repo ids checked,
progress bars on terminals only. The token is ``HF_TOKEN`` or the saved login, as
huggingface_hub finds it; it is never printed."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from adaptool.errors import HubError, describe

#: seconds a Hub request may wait for an answer (ADAPTOOL_HUB_TIMEOUT), and how many times a
#: request that only reads is tried again after a timeout or a dropped connection
TIMEOUT = 60.0
CONNECT_TIMEOUT = 10.0
RETRIES = 2
BACKOFF = 1.0


def endpoint() -> str:
    """The Hub's address, as shown to users: credentials in it are never echoed."""
    from urllib.parse import urlsplit, urlunsplit

    from huggingface_hub import constants

    parts = urlsplit(constants.ENDPOINT)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return constants.ENDPOINT


_CREDENTIALS = re.compile(r"(?<=//)[^/@\s]+@")


def redact(text: str) -> str:
    """``text`` with the credentials of any URL in it replaced by ``***``."""
    return _CREDENTIALS.sub("***@", text)


def bounded_requests() -> None:
    """Give every Hub request a timeout, and read-only ones bounded retries with backoff
    (huggingface_hub's own client waits forever on an endpoint that never answers). Safe to
    call again: the factory is installed once."""
    from huggingface_hub.utils import _http, close_session, set_client_factory

    if _http._GLOBAL_CLIENT_FACTORY is _client:
        return
    set_client_factory(_client)
    close_session()


def _client() -> Any:
    import httpx2
    from huggingface_hub.utils._http import hf_request_event_hook

    timeout = hub_timeout()
    limits = httpx2.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout))
    return httpx2.Client(
        event_hooks={"request": [hf_request_event_hook]},
        follow_redirects=True,
        timeout=limits,
        transport=_retrying_transport(limits.as_dict()),
    )


def hub_timeout() -> float:
    """``ADAPTOOL_HUB_TIMEOUT`` in seconds (default 60), checked."""
    text = os.environ.get("ADAPTOOL_HUB_TIMEOUT") or str(TIMEOUT)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise HubError(f"ADAPTOOL_HUB_TIMEOUT must be a positive number of seconds, not {text!r}.")
    return value


def _retrying_transport(limits: dict[str, float]) -> Any:
    import httpx2

    class RetryingTransport(httpx2.HTTPTransport):
        """Every request gets a time limit (huggingface_hub passes ``timeout=None`` on many
        calls, which means none); a GET or HEAD is tried again after a timeout or a dropped
        connection, with backoff."""

        def handle_request(self, request: Any) -> Any:
            asked = request.extensions.get("timeout") or {}
            # an upload's answer can take long (the server hashes what it got): ten times more
            scale = 1 if request.method in ("GET", "HEAD") else 10
            request.extensions["timeout"] = {
                key: asked.get(key) if asked.get(key) is not None else limit * scale
                for key, limit in limits.items()
            }
            for attempt in range(RETRIES + 1):
                try:
                    return super().handle_request(request)
                except (httpx2.TimeoutException, httpx2.ReadError, httpx2.RemoteProtocolError):
                    # a refused connection or an unknown host is not retried: it is not
                    # transient, and offline it must fail at once
                    if request.method not in ("GET", "HEAD") or attempt == RETRIES:
                        raise
                    time.sleep(BACKOFF * 2**attempt)
            raise AssertionError("unreachable")

    return RetryingTransport()


def _token_source() -> str:
    from huggingface_hub import get_token

    if os.environ.get("HF_TOKEN"):
        return "the token in HF_TOKEN"
    return "your saved login (`hf auth login`)" if get_token() else "no token"


@contextmanager
def hub_errors(repo_id: str, revision: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub's and the network's errors into one-paragraph HubErrors (with no
    credentials of the endpoint in them)."""
    try:
        with _hub_errors(repo_id, revision):
            yield
    except HubError as exc:
        raise HubError(redact(str(exc))) from None


@contextmanager
def _hub_errors(repo_id: str, revision: str | None) -> Iterator[None]:
    from huggingface_hub import errors

    where = endpoint()
    try:
        yield
    except errors.GatedRepoError:
        raise HubError(
            f"{repo_id} is gated at {where}: accept its terms on the Hub with the account of "
            f"{_token_source()}, then try again."
        ) from None
    except errors.RevisionNotFoundError:
        raise HubError(
            f"{repo_id} at {where} has no revision '{revision}' (a branch, tag or commit sha)."
        ) from None
    except errors.RepositoryNotFoundError:
        raise HubError(
            f"the repo {repo_id} was not found at {where}, or it is private and "
            f"{_token_source()} cannot see it."
        ) from None
    except errors.EntryNotFoundError as exc:
        raise HubError(f"{repo_id} at {where}: {describe(exc)}") from None
    except errors.HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        if status == 401:
            raise HubError(
                f"the Hub at {where} rejected {_token_source()} (401: invalid "
                f"credentials); check the token (`hf auth login`, or HF_TOKEN) and try again."
            ) from None
        if status == 403:
            raise HubError(
                f"{_token_source()} may not do this on {repo_id} at {where} (403): it "
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
    except json.JSONDecodeError as exc:  # HTML where the API's JSON belongs
        raise HubError(
            f"{where} answered something that is not the Hub's API for {repo_id} "
            f"({describe(exc)}); check HF_ENDPOINT (a proxy's login page or a web server, "
            f"not a Hub, may be answering)."
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
    """huggingface_hub's transfer bars help on a terminal; in logs and pipes they are noise.
    (Called before every transfer: it also bounds the requests' time.)"""
    import sys

    bounded_requests()
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    if sys.stderr.isatty():
        enable_progress_bars()
    else:
        disable_progress_bars()


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import validate_repo_id

    with hub_errors(repo_id):
        validate_repo_id(repo_id)
    if "/" not in repo_id:
        raise HubError(
            f"'{repo_id}' needs a namespace: give it as user/{repo_id} or org/{repo_id}."
        )
