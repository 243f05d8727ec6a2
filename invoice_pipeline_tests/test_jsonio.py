"""jsonio: orjson's speed, without its float and 64-bit limits changing a number."""

from __future__ import annotations

from decimal import Decimal

import pytest

from invoice_pipeline import jsonio


def test_exact_where_a_float_would_change_the_number() -> None:
    body = b'{"a": 1234567890123.4567, "b": -123456789012345678901234567890, "c": 1e400, "d": [0.1000000000000000000001]}'
    got = jsonio.loads(body)
    assert got == {"a": Decimal("1234567890123.4567"), "b": -123456789012345678901234567890, "c": Decimal("1e400"),
                   "d": [Decimal("0.1000000000000000000001")]}
    assert jsonio.dumps(got) == body.replace(b" ", b"").replace(b"1e400", b"1E+400")


def test_plain_floats_and_lookalikes_stay_on_the_fast_path() -> None:
    # 17-digit floats that are a double's shortest form, digits and exponents inside strings
    got = jsonio.loads(b'{"noise": 0.30000000000000004, "id": "1234567890123456789012", "guid": "1e999,", "n": 9007199254740993}')
    assert type(got["noise"]) is float and got["id"] == "1234567890123456789012" and type(got["n"]) is int


@pytest.mark.parametrize("body", [b"NaN", b'{"a": Infinity}', b'{"a": 1', b"<html></html>"])
def test_what_json_does_not_allow_is_refused(body: bytes) -> None:
    with pytest.raises(jsonio.JsonInvalid):
        jsonio.loads(body)


def test_what_orjson_refuses_but_json_allows_still_loads() -> None:
    assert jsonio.loads(b'["\\ud800"]') == ["\ud800"]
    deep = jsonio.loads(b"[" * 900 + b"]" * 900)  # orjson stops at 1024 levels, json a little before
    with pytest.raises(TypeError):
        jsonio.dumps(deep)
    assert jsonio.unstorable_reason(TypeError("Recursion limit reached")) == "is nested deeper than 254 levels"
