"""Discovery against Gamma servers that misbehave: a scripted HTTP server on loopback answers
each `/markets/keyset` request from a list, and `pm_arb discover` runs as a real subprocess.
Expected: a clear one-line error and exit 1 where Gamma cannot be read, bounded retries, and a
universe that is never silently cut short."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from pm_arb.sim.market_data import make_gamma_rows

from .conftest import assert_one_line_error, run_cli

FAST = ("--gamma-max-retries", "1", "--gamma-retry-backoff-seconds", "0.01", "--gamma-request-timeout-seconds", "0.5")


class ScriptedGamma:
    """Answers request k with script[min(k, len-1)]: (status, headers, body) or a callable(handler)."""

    def __init__(self, script) -> None:
        self.script = list(script)
        self.requests: list[tuple[float, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                k = len(outer.requests)
                outer.requests.append((time.monotonic(), self.path))
                answer = outer.script[min(k, len(outer.script) - 1)]
                if callable(answer):
                    return answer(self)
                status, headers, body = answer
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def page(rows, cursor=None, **extra) -> tuple[int, dict, bytes]:
    doc = {"markets": rows, **extra}
    if cursor is not None:
        doc["next_cursor"] = cursor
    return 200, {"Content-Type": "application/json"}, orjson.dumps(doc)


def discover(gamma: ScriptedGamma, *args: str, timeout: float = 60):
    return run_cli("discover", "--json", "--gamma-base-url", gamma.url, *FAST, *args, timeout=timeout)


ROWS = make_gamma_rows(12, seed=3, extras=False)



def _trickle(handler) -> None:
    """Headers at once, then one body byte every 0.2 s: no single read ever times out."""
    handler.send_response(200)
    handler.send_header("Content-Length", "100000")
    handler.end_headers()
    try:
        for _ in range(100_000):
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.2)
    except OSError:
        pass  # the client gave up, as it must


def _endless(handler) -> None:
    """A 200 whose body never ends (chunked, 1 MiB a chunk): discovery must not hold it all."""
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    chunk = b"%x\r\n%s\r\n" % (1 << 20, b" " * (1 << 20))
    try:
        for _ in range(200):
            handler.wfile.write(chunk)
    except OSError:
        pass


def _silent(handler) -> None:
    time.sleep(2)  # never answers within the client's 0.5 s timeout


def _cut(handler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    handler.wfile.write(b'{"markets": [')
    handler.wfile.flush()
    handler.connection.shutdown(2)


@pytest.mark.parametrize(
    "script, says",
    [
        ([_trickle], "did not finish its answer within 0.5 s"),
        ([_silent], "timed out"),
        ([_cut], "GET"),
        ([(500, {}, b"oops")], "HTTP 500"),
        ([(503, {"Retry-After": "0"}, b"")], "HTTP 503"),
        ([(422, {}, b'{"type":"validation error","error":"bad query"}')], "HTTP 422"),
        ([(429, {"Retry-After": "3600"}, b"")], "retry after 3600 s"),
        ([(200, {}, b"<html>not json</html>")], "malformed JSON"),
        ([(200, {}, b'[{"id": "1"}]')], "keyset envelope"),
        ([(200, {}, b'{"markets": {"id": "1"}}')], "keyset envelope"),
        ([page(ROWS[:6], cursor="c1"), page(ROWS[6:], cursor="c1")], "twice"),
        ([page(ROWS[:6], cursor=12345), page(ROWS[6:])], "next_cursor that is not text"),
        ([page(ROWS[:6], cursor={"id": 9}), page(ROWS[6:])], "next_cursor that is not text"),
    ],
    ids=["trickled-body", "never-answers", "cut-body", "500", "503", "422", "429-too-long", "not-json", "bare-array",
         "markets-not-a-list", "cursor-repeats", "cursor-a-number", "cursor-an-object"],
)
def test_a_gamma_that_cannot_be_read_is_one_line_and_exit_1_after_bounded_requests(script, says):
    with ScriptedGamma(script) as g:
        proc = discover(g)
    line = assert_one_line_error(proc, 1)
    assert says in line, line
    assert 1 <= len(g.requests) <= 3  # the pages, or one page and its retry


def test_a_body_without_end_is_cut_at_64_mib_not_held():
    with ScriptedGamma([_endless]) as g:
        proc = discover(g, "--gamma-request-timeout-seconds", "30")  # the size limit, not the clock, ends it
    assert "more than 64 MiB" in assert_one_line_error(proc, 1)
    assert len(g.requests) == 2


def test_retry_after_of_a_429_is_waited_before_the_retry():
    with ScriptedGamma([(429, {"Retry-After": "1"}, b"slow down"), page(ROWS)]) as g:
        proc = discover(g)
    assert proc.returncode == 0, proc.stderr
    (t0, _), (t1, _) = g.requests
    assert t1 - t0 >= 1.0  # the backoff alone is 0.01 s
    assert len(orjson.loads(proc.stdout)["markets"]) == len(ROWS)


def test_an_empty_page_ends_paging_and_the_universe_is_what_came_before():
    with ScriptedGamma([page(ROWS[:6], cursor="c1"), page([], cursor="c2"), page(ROWS[6:])]) as g:
        proc = discover(g)
    assert proc.returncode == 0, proc.stderr
    assert len(orjson.loads(proc.stdout)["markets"]) == 6 and len(g.requests) == 2


def test_odd_market_rows_are_rejected_by_reason_never_a_traceback():
    rows = [dict(r) for r in ROWS]
    rows[0]["id"] = "\u00b2"  # str.isdigit() is true of it; int() refuses it
    rows[1]["clobTokenIds"] = orjson.loads(rows[1]["clobTokenIds"])  # a real list, not a JSON string: accepted
    del rows[2]["clobTokenIds"]
    rows[3]["clobTokenIds"] = rows[4]["clobTokenIds"]  # two markets claim the same tokens
    yes5 = orjson.loads(rows[5]["clobTokenIds"])[0]
    rows[5]["clobTokenIds"] = orjson.dumps([yes5, yes5]).decode()  # YES and NO the same token
    rows[6]["clobTokenIds"] = "not json"
    rows[7]["id"] = 7  # a number, not numeric text
    with ScriptedGamma([page(rows[:6], cursor="c1"), page(rows[6:] + [rows[4]])]) as g:  # row 4 again on page 2
        proc = discover(g)
    assert proc.returncode == 0, proc.stderr
    doc = orjson.loads(proc.stdout)
    tokens = [t for m in doc["markets"] for t in (m["yes_token"], m["no_token"])]
    assert len(tokens) == len(set(tokens))
    assert yes5 not in tokens
    assert {m["id"] for m in doc["markets"]} >= {"\u00b2", rows[1]["id"], "7"}
    rejected = doc["totals"]["rejected"]
    assert rejected["not two token ids"] == 2
    assert rejected["yes and no token are the same"] == 1
    assert rejected["token held by another market"] == 1


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "chunked"])
def test_a_compressed_or_chunked_page_is_read_whole(encoding):
    import gzip
    import zlib

    body = orjson.dumps({"markets": ROWS})

    def answer(handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        if encoding == "chunked":
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            for i in range(0, len(body), 700):
                part = body[i : i + 700]
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            handler.wfile.write(b"0\r\n\r\n")
            return
        data = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
        handler.send_header("Content-Encoding", encoding)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    with ScriptedGamma([answer]) as g:
        proc = discover(g)
    assert proc.returncode == 0, proc.stderr
    assert len(orjson.loads(proc.stdout)["markets"]) == len(ROWS)
