"""Gamma discovery: page `/markets/keyset` to the end, with bounded retries and loop detection.

Offset paging on `/markets` stops at ~2000 (HTTP 422), so only the keyset endpoint is used.
Every filter is re-sent on every page (the cursor is tied to the query), and the cursor goes in
`after_cursor` (a `cursor=` parameter is silently ignored and returns page 1 forever).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson
import requests

from pm_arb.config import Config
from pm_arb.errors import UserError

END_CURSORS = {"", "LTE="}


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


def _get_page(session: requests.Session, url: str, params: dict, cfg: Config, deadline: float | None, sleep: Callable[[float], None]) -> tuple[Any, int]:
    """One page, retried on HTTP errors, timeouts and malformed JSON. Returns (body, retries used)."""
    last_kind, last_msg = "http", ""
    for attempt in range(cfg.gamma_max_retries + 1):
        if attempt:
            delay = cfg.gamma_retry_backoff_seconds * (2 ** (attempt - 1))
            if deadline is not None and time.monotonic() + delay > deadline:
                raise GammaError("timeout", f"Gamma refresh deadline reached after {attempt} attempt(s): {last_msg}")
            sleep(delay)
        timeout = cfg.gamma_request_timeout_seconds
        if deadline is not None:
            timeout = max(0.05, min(timeout, deadline - time.monotonic()))
        try:
            resp = session.get(url, params=params, timeout=timeout)
        except requests.Timeout:
            last_kind, last_msg = "timeout", f"GET {url} timed out after {timeout:.1f} s"
            continue
        except requests.ConnectionError as exc:
            last_kind, last_msg = "connection", f"cannot connect to {url}: {exc.__class__.__name__}"
            continue
        if resp.status_code == 422:
            raise GammaError("http", f"GET {url} was rejected (HTTP 422): {resp.text[:200]}")
        if resp.status_code >= 400:
            last_kind, last_msg = "http", f"GET {url} answered HTTP {resp.status_code}"
            continue
        try:
            return orjson.loads(resp.content), attempt
        except orjson.JSONDecodeError:
            last_kind, last_msg = "bad_json", f"GET {url} returned malformed JSON ({len(resp.content)} bytes)"
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
            if not body["markets"] or not isinstance(nxt, str) or nxt in END_CURSORS:
                return result
            if nxt in seen_cursors:
                raise GammaError("pagination_loop", f"Gamma returned cursor {nxt[:40]!r} twice: the paging loops")
            seen_cursors.add(nxt)
            cursor = nxt
    finally:
        if own:
            session.close()
