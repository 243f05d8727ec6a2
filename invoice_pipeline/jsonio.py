"""JSON in and out without losing a digit: orjson on the hot path, exact parsing where it would not be.

orjson parses every number into a float or a 64-bit int: `1234567890123.4567` would come back as
`...4568` and a 30-digit integer as `1.2345678901234568e+29`, in the kept raw payload, the flattened
tables and the money columns alike. It has no Decimal mode, and the stdlib parser costs several
times as much, so `loads` scans the bytes for number tokens that a float could change (16 or more
digits, or an exponent of three digits) and, only when one really would change, parses the body
again with the stdlib parser: non-integral numbers as Decimal (their exact text), integers beyond
64 bits as Decimal too (orjson cannot write those back). `dumps` writes Decimals back as the same
number token, so a payload that went through `loads` is written exactly as received.

The stdlib parser is also the fallback for a body orjson refuses but JSON allows (a lone surrogate
such as "\\ud800", nesting deeper than orjson's limit): the body loads, and the one record that
cannot be stored as JSON text is quarantined later (batch.py), not the whole page.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import orjson

# A number token a double may not hold exactly: 16+ digits (dots allowed among them), or a 3-digit
# exponent, where a JSON value starts and ends (after ':' ',' '[', before ',' ']' '}'). Text inside a
# string can still match ("a:1e500,"): every match is checked exactly below, and a false alarm only
# costs an exact parse.
_SUSPECT = re.compile(rb"[:,\[]\s*(-?[0-9](?:[0-9.]{15,}(?:[eE][-+]?[0-9]+)?|[0-9.]*[eE][-+]?[0-9]{3,}))(?=\s*[,\]}])")
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what orjson reads and writes as an int
# The cheap pre-check, at C speed (translate + one find, a small fraction of what the regex alone
# costs: benchmarks/RESULTS.md, "Figures behind design choices in the code"): in the body's shape (whitespace and signs dropped, digits and dots as "0", ":" "," "["
# as ":", the rest as "x"), does a value start with 16 digits? Hex strings (Oracle's ETags) have digit
# runs, but inside quotes. Exponents too large for a double make orjson fail (then the exact parse
# runs); underflow below 1e-300 is not looked for (no invoice amount is that small).
_SHAPE = bytes(ord("0") if c in b"0123456789." else ord(":") if c in b":,[" else ord("x") for c in range(256))
_RUN = b":" + b"0" * 16


class JsonInvalid(ValueError):
    """The bytes are not JSON (or use NaN/Infinity, which JSON does not have)."""


def _exact_int(text: str) -> int | Decimal:
    value = int(text)
    return value if _INT_MIN <= value <= _INT_MAX else Decimal(text)


def _no_constant(name: str) -> Any:
    raise JsonInvalid(f"{name} is not a JSON value")


def _exact(content: bytes | str) -> Any:
    return json.loads(content, parse_float=Decimal, parse_int=_exact_int, parse_constant=_no_constant)


def _loses_digits(token: bytes) -> bool:
    try:
        if b"." not in token and b"e" not in token and b"E" not in token:
            return not _INT_MIN <= int(token) <= _INT_MAX
        text = token.decode()
        if repr(float(text)) == text:  # the usual case: the sender wrote a double's shortest form
            return False
        exact = Decimal(text)
        return Decimal(repr(float(exact))) != exact or not exact.is_finite()
    except (ValueError, ArithmeticError):  # e.g. "1.2.3" inside a string: not a number token
        return False


def loads(content: bytes | str) -> Any:
    """Parsed JSON; numbers exactly as sent (see the module's docstring). Raises JsonInvalid."""
    try:
        value = orjson.loads(content)
    except orjson.JSONDecodeError:
        try:
            return _exact(content)  # lone surrogates, very deep nesting: JSON all the same
        except (ValueError, RecursionError) as exc:
            raise JsonInvalid(str(exc)) from None
    raw = content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass")
    if _RUN not in raw.translate(_SHAPE, b" \t\r\n+-"):
        return value
    for match in _SUSPECT.finditer(raw):
        if _loses_digits(match.group(1)):
            return _exact(content)
    return value


def _default(value: Any) -> Any:
    if isinstance(value, Decimal) and value.is_finite():
        return orjson.Fragment(str(value))  # the token as received ("1.50" stays "1.50")
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def dumps(value: Any, sort_keys: bool = False) -> bytes:
    """Compact UTF-8 JSON; Decimals as their exact number token. Raises TypeError for what JSON text
    cannot hold (a lone surrogate) or orjson refuses (nesting deeper than 254 levels)."""
    return orjson.dumps(value, default=_default, option=orjson.OPT_SORT_KEYS if sort_keys else 0)


def unstorable_reason(exc: Exception) -> str:
    """Why dumps() refused a payload, in words a person can act on."""
    text = str(exc)
    if "Recursion limit" in text:
        return "is nested deeper than 254 levels"
    if "surrogate" in text:
        return "holds a lone UTF-16 surrogate (e.g. \\ud800), which is not valid text"
    return text


def ascii_text(value: Any) -> str:
    """Best-effort JSON text of a payload dumps() refused, for the quarantine (escapes surrogates)."""
    try:
        return json.dumps(value, ensure_ascii=True, sort_keys=True, default=str)
    except (RecursionError, ValueError, TypeError) as exc:
        return f"(payload not kept: {type(exc).__name__})"
