"""Messages routed by kind, then parsed by PyArrow's JSON reader with each kind's own narrow
schema (ADR/0009 section 6 has the engines measured against an orjson loop).

Routing reads bytes, not JSON: the position of `"event_type":"` (one substring search per
message) and the four bytes after it give the kind. A kind's messages are joined into one
newline-delimited buffer and parsed at once into typed columns; fields the tables do not read
are skipped. The reader is as strict as orjson and the reference mappers (a field of another
JSON type than the schema's, a duplicate key, invalid UTF-8 or bad JSON is an error), with one
exception, guarded here: it accepts the literals NaN and Inf(inity). Whatever this path cannot
vouch for is left to the caller's exact path (the reference mappers, `wire/normalize.py`):
- a message not parsed (no `"event_type":"`, or a kind the tables do not use) whose bytes do
  not show it surely has no asked-for kind (`_surely_none`);
- a group the reader rejects, or that gives more rows than messages (two objects in one):
  the group is halved until the messages at fault are found;
- a message holding `NaN` or `Inf`, or whose top-level `event_type` is not the one it was
  routed by.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from pm_arb.reader.columns import arrow_of

S = pa.string()
_LEVELS = pa.list_(pa.struct([("price", S), ("size", S)]))
_COMMON = [("event_type", S), ("market", S), ("timestamp", S)]

# kind -> the fields its tables read.
SCHEMAS: dict[str, pa.Schema] = {
    "book": pa.schema(_COMMON + [("asset_id", S), ("bids", _LEVELS), ("asks", _LEVELS), ("buys", _LEVELS), ("sells", _LEVELS)]),
    "price_change": pa.schema(_COMMON + [
        ("price_changes", pa.list_(pa.struct([("asset_id", S), ("price", S), ("size", S), ("side", S)]))),
        ("changes", pa.list_(pa.struct([("price", S), ("size", S), ("side", S)])))]),
    "last_trade_price": pa.schema(_COMMON + [("asset_id", S), ("price", S), ("size", S), ("side", S), ("transaction_hash", S)]),
    "best_bid_ask": pa.schema(_COMMON + [("asset_id", S), ("best_bid", S), ("best_ask", S)]),
    "market_event": pa.schema(_COMMON + [("asset_id", S), ("old_tick_size", S), ("new_tick_size", S), ("winning_asset_id", S),
                                         ("winning_outcome", S), ("question", S)]),
}
EVENT_TYPES = {"book": ("book",), "price_change": ("price_change",), "last_trade_price": ("last_trade_price",),
               "best_bid_ask": ("best_bid_ask",), "market_event": ("tick_size_change", "new_market", "market_resolved")}
KINDS = list(EVENT_TYPES)
_KEY = b'"event_type":"'
_CODE = {int.from_bytes(t[:4].encode(), "little"): KINDS.index(kind) for kind, types in EVENT_TYPES.items() for t in types}
_LITERALS = (b"NaN", b"Inf")  # numbers the reader accepts and orjson does not
_SMALLEST_GROUP = 32  # a failing group is halved down to this size, then left to the exact path
_READ = pj.ReadOptions(use_threads=False, block_size=1 << 30)  # one block: the chunker never cuts a message
_PARSE = {kind: pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore") for kind, schema in SCHEMAS.items()}
_NONE = np.zeros(0, np.int64)


class Routed(NamedTuple):
    parsed: dict[str, tuple[np.ndarray, pa.Table]]  # kind -> (message numbers, their fields)
    exact: np.ndarray  # message numbers the caller decodes with the reference mappers


def bools(mask: np.ndarray) -> pa.Array:
    """A NumPy bool mask as an Arrow boolean array (bit-packed), without pa.array()."""
    return pa.Array.from_buffers(pa.bool_(), len(mask), [None, pa.py_buffer(np.packbits(mask, bitorder="little"))])


def offsets_of(a: pa.Array) -> np.ndarray:
    return np.frombuffer(a.buffers()[1], np.int32, count=len(a) + 1, offset=a.offset * 4).astype(np.int64)


def braced(messages: pa.Array) -> np.ndarray:
    """Which messages start with `{` and end with `}`: the ones `route` parses. With these
    bounds, one per line, a message cut short cannot run on into the next line: after its
    last `}` the reader expects `,`, `}` or `]` (or is inside a string, which a newline
    ends in error), never the next line's `{`; so a reader error or a row count other than the
    line count is the only way an odd message shows, and rows line up with messages."""
    offsets = offsets_of(messages)
    data = np.frombuffer(messages.buffers()[2], np.uint8) if messages.buffers()[2] is not None else np.zeros(1, np.uint8)
    out = offsets[1:] > offsets[:-1]
    out[out] = (data[offsets[:-1][out]] == ord("{")) & (data[offsets[1:][out] - 1] == ord("}"))
    return out


def route(messages: pa.Array, kinds: set[str], eligible: np.ndarray | None = None) -> Routed:
    """Parse the `messages` (binary, JSON text) of the kinds asked for, of those `eligible`
    says (default: all). Messages not `braced` are neither parsed nor listed as exact: they
    are the caller's (arrays, white space, control text)."""
    n = len(messages)
    if n == 0:
        return Routed({}, _NONE)
    offsets = offsets_of(messages)
    data = np.frombuffer(messages.buffers()[2], np.uint8) if messages.buffers()[2] is not None else np.zeros(1, np.uint8)
    starts, ends = offsets[:-1], offsets[1:]
    objects = braced(messages) if eligible is None else eligible & braced(messages)
    at = np.asarray(pc.find_substring(messages, _KEY).fill_null(-1)).astype(np.int64)
    value = starts + at + len(_KEY)
    found = (at >= 0) & (value + 4 <= ends) & objects
    kind_of = np.full(n, -1, np.int8)
    if found.any():
        v = value[found]
        code = data[v].astype(np.uint32) | data[v + 1].astype(np.uint32) << 8 | data[v + 2].astype(np.uint32) << 16 | data[v + 3].astype(np.uint32) << 24
        k = np.full(len(v), -1, np.int8)
        for c, i in _CODE.items():
            k[code == c] = i
        kind_of[found] = k
    asked = np.isin(kind_of, [KINDS.index(k) for k in kinds])
    unparsed = np.nonzero(objects & ~asked)[0]
    exact = [unparsed[~_surely_none(messages, unparsed, at[unparsed])]] if len(unparsed) else [_NONE]
    parsed: dict[str, tuple[np.ndarray, pa.Table]] = {}
    for i, kind in enumerate(KINDS):
        if kind not in kinds:
            continue
        rows = np.nonzero(kind_of == i)[0]
        if len(rows) == 0:
            continue
        ok, table, failed = _parse(messages, rows, kind)
        exact.append(failed)
        if table is None:
            continue
        same = np.asarray(pc.is_in(table.column("event_type"), value_set=pa.array(EVENT_TYPES[kind], S)).fill_null(False)).astype(bool)
        if not same.all():
            exact.append(ok[~same])
            ok, table = ok[same], table.filter(bools(same))
        if len(ok):
            parsed[kind] = (ok, table)
    return Routed(parsed, np.sort(np.concatenate(exact)))


def _surely_none(messages: pa.Array, rows: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Of messages not parsed (no `"event_type":"`, or a kind the tables asked for do not
    use), which surely are not of an asked-for kind: the bytes show one top-level event_type
    key or none. A nested match (a `{` before it), a second key (orjson keeps the last), a
    backslash (an escaped key) or `"event_type"` without `:"` right after it (white space)
    leave the message to the exact path. The usual case (each message's one key is its first)
    is settled by two searches over all of them; the rest message by message."""
    out = np.zeros(len(rows), bool)
    first = at == 1
    if first.any():  # `{"event_type":"...`: top level; one key each if the keys count the messages
        group = messages.take(arrow_of(rows[first], pa.int64()))
        text = group.buffers()[2].to_pybytes() if group.buffers()[2] is not None else b""
        if b"\\" not in text and text.count(b'"event_type"') == len(group):
            out[first] = True
    for j in np.nonzero(~out)[0].tolist():
        payload, where = messages[int(rows[j])].as_py(), int(at[j])
        if b"\\" in payload:
            continue
        keys = payload.count(b'"event_type"')
        nested = payload.find(b"{", 1)
        out[j] = keys == 0 if where < 0 else keys == 1 and (nested < 0 or nested > where)
    return out


def _parse(messages: pa.Array, rows: np.ndarray, kind: str) -> tuple[np.ndarray, pa.Table | None, np.ndarray]:
    """(messages parsed, their table, messages left to the exact path)."""
    group = messages.take(arrow_of(rows, pa.int64()))
    lines = _ndjson(group)
    odd = _with_literals(lines, group)
    if odd.any():
        ok, table, failed = _parse(messages, rows[~odd], kind) if (~odd).any() else (_NONE, None, _NONE)
        return ok, table, np.concatenate([failed, rows[odd]])
    try:
        table = pj.read_json(pa.BufferReader(lines), read_options=_READ, parse_options=_PARSE[kind])
        if table.num_rows == len(rows):
            return rows, table, _NONE
    except pa.ArrowInvalid:
        pass
    if len(rows) <= _SMALLEST_GROUP:
        return _NONE, None, rows
    half = len(rows) // 2
    parts = [_parse(messages, rows[:half], kind), _parse(messages, rows[half:], kind)]
    tables = [t for _, t, _ in parts if t is not None]
    return (np.concatenate([r for r, _, _ in parts]), pa.concat_tables(tables) if tables else None,
            np.concatenate([f for _, _, f in parts]))


def _with_literals(lines: pa.Buffer, group: pa.Array) -> np.ndarray:
    """Which messages hold NaN or Inf anywhere. The search is for the capital (memchr, in C,
    over the whole buffer: market data has none outside free text); each one found is checked
    in Python. Inside a string the literals are harmless and only cost the exact path."""
    odd = np.zeros(len(group), bool)
    text = lines.to_pybytes()
    ends = None
    for capital, literal in ((b"N", b"NaN"), (b"I", b"Inf")):
        at = text.find(capital)
        while at >= 0:
            if not text.startswith(literal, at):
                at = text.find(capital, at + 1)
                continue
            if ends is None:
                ends = offsets_of(group)[1:] + np.arange(1, len(group) + 1)  # each line's end, past its newline
            line = int(np.searchsorted(ends, at, side="right"))
            odd[line] = True
            at = text.find(capital, int(ends[line]))
    return odd


def _ndjson(group: pa.Array) -> pa.Buffer:
    """The messages, one per line, as one buffer (an Arrow kernel: no Python per message)."""
    n = len(group)
    newlines = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(np.arange(n + 1, dtype=np.int32)), pa.py_buffer(b"\n" * n)])
    joined = pc.binary_join_element_wise(group, newlines, pa.scalar(b"", pa.binary()))
    return joined.buffers()[2].slice(0, int(offsets_of(joined)[-1]))
