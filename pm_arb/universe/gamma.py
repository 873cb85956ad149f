"""Gamma discovery: page `/markets/keyset` to the end, with bounded retries and loop detection.

Offset paging on `/markets` stops at ~2000 (HTTP 422), so only the keyset endpoint is used.
Every filter is re-sent on every page (the cursor is tied to the query), and the cursor goes in
`after_cursor` (a `cursor=` parameter is silently ignored and returns page 1 forever).
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson
import requests
import urllib3

from pm_arb.config import Config
from pm_arb.errors import UserError

END_CURSORS = {"", "LTE="}
MAX_PAGE_BYTES = 64 * 1024 * 1024  # a keyset page of 1000 markets is ~2 MB
MAX_RETRY_AFTER_S = 60.0  # the longest Retry-After honoured; a longer one fails the request now


class GammaError(UserError):
    """Gamma could not be read after the allowed retries; `kind` classifies it for the runlog."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message, exit_code=1)
        self.kind = kind


@dataclass
class DiscoveryResult:
    rows: list[Any] = field(default_factory=list)
    pages: int = 0
    retries: int = 0


def _retry_after_s(resp: requests.Response) -> float | None:
    """Seconds a 429/503 asks to wait (`Retry-After`: seconds or an HTTP date), None when absent or unreadable."""
    value = resp.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _read_body(resp: requests.Response, url: str, timeout: float) -> bytes:
    """The whole body within `timeout` seconds in all: requests' timeout bounds each read, so a
    server trickling bytes held a request for ever. Bounded in size too."""
    end = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            # read1: what one socket read brings (read() and iter_content wait to fill 64 KiB)
            chunk = resp.raw.read1(65536, decode_content=True)
        except urllib3.exceptions.ReadTimeoutError:
            raise _BadPage("timeout", f"GET {url} timed out after {timeout:.1f} s") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _BadPage("http", f"GET {url} broke off its answer: {exc.__class__.__name__}") from None
        if not chunk:
            break
        size += len(chunk)
        if size > MAX_PAGE_BYTES:
            raise _BadPage("too_large", f"GET {url} sent more than {MAX_PAGE_BYTES >> 20} MiB")
        chunks.append(chunk)
        if time.monotonic() > end:
            raise _BadPage("timeout", f"GET {url} did not finish its answer within {timeout:.1f} s")
    return b"".join(chunks)


class _BadPage(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.message = kind, message


def _get_page(session: requests.Session, url: str, params: dict, cfg: Config, deadline: float | None, sleep: Callable[[float], None]) -> tuple[Any, int]:
    """One page, retried on HTTP errors, timeouts and malformed JSON. Returns (body, retries used).

    A 429 or 503 with `Retry-After` waits that long (at least the backoff, at most
    MAX_RETRY_AFTER_S and the deadline) before its retry."""
    last_kind, last_msg = "http", ""
    wait_at_least = 0.0
    for attempt in range(cfg.gamma_max_retries + 1):
        if attempt:
            delay = max(cfg.gamma_retry_backoff_seconds * (2 ** (attempt - 1)), wait_at_least)
            if deadline is not None and time.monotonic() + delay > deadline:
                raise GammaError("timeout", f"Gamma refresh deadline reached after {attempt} attempt(s): {last_msg}")
            sleep(delay)
        wait_at_least = 0.0
        timeout = cfg.gamma_request_timeout_seconds
        if deadline is not None:
            timeout = max(0.05, min(timeout, deadline - time.monotonic()))
        try:
            with session.get(url, params=params, timeout=timeout, stream=True) as resp:
                if resp.status_code == 422:
                    reason = _read_body(resp, url, timeout)[:200].decode("utf-8", "replace")
                    raise GammaError("http", f"GET {url} was rejected (HTTP 422): {reason}")
                if resp.status_code >= 400:
                    last_kind, last_msg = "http", f"GET {url} answered HTTP {resp.status_code}"
                    retry_after = _retry_after_s(resp) if resp.status_code in (429, 503) else None
                    if retry_after is not None:
                        if retry_after > MAX_RETRY_AFTER_S:
                            raise GammaError("http", f"{last_msg} asking to retry after {retry_after:.0f} s (more than {MAX_RETRY_AFTER_S:.0f} s); try again later")
                        wait_at_least = retry_after
                        last_msg += f" (Retry-After {retry_after:g} s)"
                    continue
                content = _read_body(resp, url, timeout)
        except requests.Timeout:
            last_kind, last_msg = "timeout", f"GET {url} timed out after {timeout:.1f} s"
            continue
        except requests.ConnectionError as exc:
            last_kind, last_msg = "connection", f"cannot connect to {url}: {exc.__class__.__name__}"
            continue
        except requests.RequestException as exc:  # a broken chunked body, a bad redirect, ...
            last_kind, last_msg = "http", f"GET {url} failed: {exc.__class__.__name__}"
            continue
        except _BadPage as exc:
            last_kind, last_msg = exc.kind, exc.message
            continue
        try:
            return orjson.loads(content), attempt
        except orjson.JSONDecodeError:
            last_kind, last_msg = "bad_json", f"GET {url} returned malformed JSON ({len(content)} bytes)"
            continue
    raise GammaError(last_kind, f"{last_msg} (after {cfg.gamma_max_retries} retries); check --gamma-base-url and the network")


def fetch_active_rows(cfg: Config, deadline_s: float | None = None, session: requests.Session | None = None,
                      sleep: Callable[[float], None] = time.sleep) -> DiscoveryResult:
    """Every market row Gamma lists as active and not closed/archived, across all keyset pages."""
    url = cfg.gamma_base_url.rstrip("/") + "/markets/keyset"
    deadline = time.monotonic() + deadline_s if deadline_s else None
    own = session is None
    session = session or requests.Session()
    result = DiscoveryResult()
    seen_cursors: set[str] = set()
    cursor: str | None = None
    try:
        while True:
            if result.pages >= cfg.gamma_max_pages:
                raise GammaError("pagination_loop", f"Gamma paging did not end after {cfg.gamma_max_pages} pages (raise --gamma-max-pages if the universe is that large)")
            params = {"active": "true", "closed": "false", "archived": "false", "limit": str(cfg.gamma_page_limit)}
            if cursor is not None:
                params["after_cursor"] = cursor
            body, retries = _get_page(session, url, params, cfg, deadline, sleep)
            result.retries += retries
            result.pages += 1
            if not isinstance(body, dict) or not isinstance(body.get("markets"), list):
                raise GammaError("bad_json", f"GET {url} did not return a keyset envelope {{\"markets\": [...]}}")
            result.rows.extend(body["markets"])
            nxt = body.get("next_cursor")
            if nxt is not None and not isinstance(nxt, str):
                # Ending here would cut the universe short without a word.
                raise GammaError("bad_json", f"GET {url} returned a next_cursor that is not text ({type(nxt).__name__}): cannot page on")
            if not body["markets"] or nxt is None or nxt in END_CURSORS:
                return result
            if nxt in seen_cursors:
                raise GammaError("pagination_loop", f"Gamma returned cursor {nxt[:40]!r} twice: the paging loops")
            seen_cursors.add(nxt)
            cursor = nxt
    finally:
        if own:
            session.close()
