"""Talking to the Hugging Face Hub through ``huggingface_hub`` at ``HF_ENDPOINT`` (the real Hub
unless set): its errors and the network's turned into one-paragraph HubErrors, repo ids checked,
progress bars on terminals only. The token is ``HF_TOKEN`` or the saved login, as
huggingface_hub finds it; it is never printed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from adaptool.errors import HubError, describe


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _token_source() -> str:
    from huggingface_hub import get_token

    if os.environ.get("HF_TOKEN"):
        return "the token in HF_TOKEN"
    return "your saved login (`hf auth login`)" if get_token() else "no token"


@contextmanager
def hub_errors(repo_id: str, revision: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub's and the network's errors into one-paragraph HubErrors."""
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


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import validate_repo_id

    with hub_errors(repo_id):
        validate_repo_id(repo_id)
    if "/" not in repo_id:
        raise HubError(
            f"'{repo_id}' needs a namespace: give it as user/{repo_id} or org/{repo_id}."
        )
