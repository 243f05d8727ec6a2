"""prepare_batch's fast paths (caches, row runs, C-level transposition) change nothing it outputs.

The same records, realistic ones from each simulator plus seeded copies with odd values in random
places (to reach the quarantine and the rarely used branches), are prepared twice: as the product
does, and with the straightforward implementations below patched in (the plain conversions of
money.py/timeutil.py, a flatten that fills one column list per field and row, a row-by-row
conformed to_arrow). Every table must be equal, schema and column order included.
"""

from __future__ import annotations

import copy
import random
import re
from contextlib import ExitStack
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pyarrow as pa
import pytest

from invoice_pipeline import batch
from invoice_pipeline.batch import prepare_batch
from invoice_pipeline.conformed import ARROW_SCHEMAS
from invoice_pipeline.flatten import FIELD, META_ARROW, ROOT_TABLE, SEP, _ambiguous, escape_key, scalar_text
from invoice_pipeline.money import MONEY, MappingError, Scale
from invoice_pipeline.simulate import start_simulators
from invoice_pipeline.sources import source_class
from invoice_pipeline.sources.base import Window
from invoice_pipeline.timeutil import parse_date

from .conftest import make_app

NOW = datetime(2025, 7, 1, 12, 0, 0, 123456, tzinfo=UTC)
ODD = [None, "", "abc", 1.5, 10**15, True, False, [], {}, [1, "a", None, 2.5, True], [{"x": 1}, {"y": [1, 2]}],
       {"a": {"b": 1, "c": []}}, "2024-13-45", "1e5", " 12.5 ", "NaN", "Infinity", -0.0, 1e300, "12,50", 0, 3, -7,
       0.1 + 0.2, "2024-01-01T00:00:00.1234567Z", "2024-01-01 10:00:00", "2024-06-01T10:00:00+05:30", "03/15/2024",
       "03/15/2024 10:00:00", "99999999999999.99995", "-0", "1E-7", "1000000", [[1, 2], [3]], [None], ["x", {"k": "v"}],
       "üñí €", 1e-320, "true", "Y", 1, "0012", {"": 1, "k k": None}]


# -- the straightforward implementations ------------------------------------------------------
def ref_parse_timestamp(value: str, naive_tz: str = "UTC") -> datetime:
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    text = re.sub(r"\.(\d+)", lambda m: "." + (m.group(1) + "000000")[:6], text, count=1)
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=ZoneInfo(naive_tz))
    return parsed.astimezone(UTC)


def ref_to_decimal(value: Any, field: str, scale: Scale = MONEY, *, required: bool = False) -> Decimal | None:
    cls = value.__class__
    try:
        if cls is str and value:
            dec = Decimal(value)
        elif cls is float:
            dec = Decimal(repr(value))
        elif cls is int:
            dec = Decimal(value)
        elif value is None or value == "":
            if required:
                raise MappingError(f"{field}: missing amount")
            return None
        else:
            raise MappingError(f"{field}: expected a number, got {value!r}")
    except InvalidOperation:
        raise MappingError(f"{field}: not a number: {value!r}") from None
    if not dec.is_finite():
        raise MappingError(f"{field}: not a finite number: {value!r}")
    limit = scale.limit
    if abs(dec) < limit:
        dec = dec.quantize(scale.places, rounding=ROUND_HALF_EVEN)
        if abs(dec) < limit:
            return dec
    raise MappingError(f"{field}: {value!r} is too large for its column (at most {limit - scale.places} allowed)")


def ref_to_int(value: Any, field: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise MappingError(f"{field}: not an integer: {value!r}") from None
    if -(2**31) <= number < 2**31:
        return number
    raise MappingError(f"{field}: {value!r} is too large for its column (INTEGER)")


def ref_to_date(value: Any, field: str, fmt: str | None = None) -> date | None:
    if value is None or value == "":
        return None
    try:
        return parse_date(str(value), fmt)
    except ValueError:
        raise MappingError(f"{field}: not a valid date: {value!r}") from None


def ref_to_timestamp(value: Any, field: str, naive_tz: str = "UTC") -> datetime | None:
    if value is None or value == "":
        return None
    try:
        return ref_parse_timestamp(str(value), naive_tz)
    except ValueError:
        raise MappingError(f"{field}: not a valid timestamp: {value!r}") from None


def ref_to_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class RefBuffer:
    """One list per column, every column padded after every row."""

    def __init__(self) -> None:
        self.cols: dict[str, list] = {}
        self.rows = 0

    def append(self, row: dict) -> None:
        for key, value in row.items():
            self.cols.setdefault(key, [None] * self.rows).append(value)
        self.rows += 1
        for col in self.cols.values():
            if len(col) < self.rows:
                col.append(None)

    def to_arrow(self) -> pa.Table:
        return pa.table({k: pa.array(v, type=META_ARROW.get(k, pa.string())) for k, v in self.cols.items()})


def ref_flatten_record(invoice_id: str, payload: dict, tables: dict, root_meta: dict) -> None:
    def walk(obj: dict, table: str, prefix: str, row: dict, row_id: str) -> None:
        for key, value in obj.items():
            path = prefix + (escape_key(str(key)) if _ambiguous(str(key), prefix == FIELD) else str(key))
            if isinstance(value, dict):
                if value:
                    walk(value, table, path + SEP, row, row_id)
                else:
                    row[path] = "{}"
            elif isinstance(value, list):
                if all(not isinstance(v, dict | list) for v in value):
                    row[path] = orjson.dumps(value).decode()
                    continue
                child = f"{table}{SEP}{path[1:]}"
                buffer = tables.setdefault(child, RefBuffer())
                for pos, item in enumerate(value):
                    rid = f"{row_id}.{pos}" if row_id else str(pos)
                    crow = {"_invoice_id": invoice_id, "_row_id": rid, "_parent_row_id": row_id or None, "_position": pos}
                    if isinstance(item, dict):
                        walk(item, child, FIELD, crow, rid)
                    elif isinstance(item, list):
                        crow[FIELD + "value"] = orjson.dumps(item).decode()
                    else:
                        crow[FIELD + "value"] = scalar_text(item)
                    buffer.append(crow)
            else:
                row[path] = scalar_text(value)

    row = {**root_meta, "_invoice_id": invoice_id}
    walk(payload, ROOT_TABLE, FIELD, row, "")
    tables.setdefault(ROOT_TABLE, RefBuffer()).append(row)


def ref_conformed_to_arrow(table: str, rows: list[dict], *, checked: bool = False) -> pa.Table:
    schema = ARROW_SCHEMAS[table]
    return pa.table({f.name: pa.array([row.get(f.name) for row in rows], type=f.type) for f in schema})


def use_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    helpers = {"to_decimal": ref_to_decimal, "to_int": ref_to_int, "to_date": ref_to_date,
               "to_timestamp": ref_to_timestamp, "to_text": ref_to_text}
    for source in ("oracle_occ", "crmcom", "softwareone", "agvance"):
        module = importlib.import_module(f"invoice_pipeline.sources.{source}.mapping")
        for name, fn in helpers.items():
            if hasattr(module, name):
                monkeypatch.setattr(module, name, fn)
    monkeypatch.setattr(batch, "flatten_record", ref_flatten_record)
    monkeypatch.setattr(batch, "TableBuffer", RefBuffer)
    monkeypatch.setattr(batch, "to_arrow", ref_conformed_to_arrow)


# -- the comparison ---------------------------------------------------------------------------
def odd_copy(payload: dict, rng: random.Random) -> dict:
    """A copy with 1-3 values (anywhere, at any depth) replaced by odd ones."""
    out = copy.deepcopy(payload)
    spots: list[tuple[Any, Any]] = []

    def collect(obj: Any) -> None:
        items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
        for key, value in items:
            spots.append((obj, key))
            collect(value)

    collect(out)
    for parent, key in rng.sample(spots, min(len(spots), rng.choice([1, 1, 2, 3]))):
        parent[key] = copy.deepcopy(rng.choice(ODD))
    return out


def prepared(source, payloads: list[dict], size: int) -> list:
    """Every table of every batch (or the batch's error), in output order."""
    out = []
    for start in range(0, len(payloads), size):
        records = [source.record_or_raw(copy.deepcopy(p)) for p in payloads[start:start + size]]
        try:
            lb, before = prepare_batch(source, records, "run-1", NOW, start_date=datetime(2024, 3, 1, tzinfo=UTC))
        except Exception as exc:  # noqa: BLE001 - the same error in both
            out.append(f"{type(exc).__name__}: {exc}")
            continue
        tables = [("keys", lb.keys), ("raw", lb.raw), ("quarantine", lb.quarantine)]
        tables += [(f"flat {k}", t) for k, t in lb.flat.items()] + [(f"conformed {k}", t) for k, t in lb.conformed.items()]
        out.append((before, tables))
    return out


def test_prepare_batch_equals_the_straightforward_implementation(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(11)
    with ExitStack() as stack:
        sims = start_simulators(stack, size=40)
        app = make_app(tmp_path, {name: sim.source_config() for name, sim in sims.items()})
        window = Window(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
        cases = []
        for name in sims:
            config = app.sources[name]
            source = source_class(config.type)(name, config)
            payloads = [rec.payload for records in source.extract(window) for rec in records]
            assert len(payloads) == 40, name
            odd = [odd_copy(p, rng) for p in payloads for _ in range(3)]
            cases.append((name, source, payloads, odd))

    fast = {name: (prepared(src, plain, 500), prepared(src, odd, 20)) for name, src, plain, odd in cases}
    use_reference(monkeypatch)
    quarantined = 0
    for name, src, plain, odd in cases:
        slow = (prepared(src, plain, 500), prepared(src, odd, 20))
        for got_batches, want_batches in zip(fast[name], slow, strict=True):
            assert len(got_batches) == len(want_batches)
            for got, want in zip(got_batches, want_batches, strict=True):
                if isinstance(want, str):
                    assert got == want, name
                    continue
                assert got[0] == want[0], name
                assert [t for t, _ in got[1]] == [t for t, _ in want[1]], name  # same tables, same order
                for (table, g), (_, w) in zip(got[1], want[1], strict=True):
                    assert g.schema.equals(w.schema, check_metadata=True), (name, table)
                    assert g.equals(w), (name, table)
                quarantined += dict(want[1])["quarantine"].num_rows
    assert quarantined > 20  # the odd copies did reach the quarantine


def test_raw_hash_is_the_hash_of_the_stored_payload_text() -> None:
    import hashlib

    from invoice_pipeline.sources.base import SourceRecord

    class Plain:
        name, has_installments = "s", False

        def to_conformed(self, payload):
            raise MappingError("not mapped here")

    payload = {"b": "ü", "a": [1, 2.5, None], "c": {"z": True}}
    lb, _ = prepare_batch(Plain(), [SourceRecord("1", NOW, payload)], "r", NOW)
    text = lb.raw.column("payload")[0].as_py()
    assert text == batch._payload_json(payload)
    assert lb.raw.column("payload_sha256")[0].as_py() == hashlib.sha256(text.encode()).hexdigest()
