"""orjson.dumps for documents that may hold text from the OS that is not UTF-8.

A path whose bytes are not UTF-8 (a run dir named on another system, say) reaches Python as a
str with lone surrogates (os.fsdecode), which orjson refuses. Such text is written with its odd
bytes as backslash escapes (`r\\xff`), so a report names the path instead of failing to be
written; text that is UTF-8 is written as always, at no extra cost.
"""

from __future__ import annotations

from typing import Any

import orjson


def dumps(doc: Any, option: int = 0) -> bytes:
    try:
        return orjson.dumps(doc, option=option)
    except TypeError:  # a str with lone surrogates (anything else fails again, as it should)
        return orjson.dumps(_escaped(doc), option=option)


def _escaped(value: Any) -> Any:
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        return {_text(k) if isinstance(k, str) else k: _escaped(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_escaped(v) for v in value]
    return value


def _text(s: str) -> str:
    try:
        raw = s.encode("utf-8", "surrogateescape")  # the OS's bytes, as os.fsencode gives them back
    except UnicodeEncodeError:
        raw = s.encode("utf-8", "surrogatepass")  # a surrogate no byte decoded to: its UTF-8 form
    return raw.decode("utf-8", "backslashreplace")
