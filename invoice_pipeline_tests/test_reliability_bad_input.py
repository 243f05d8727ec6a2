"""Bad records are quarantined with their reason and raw payload; the rest loads; nothing is dropped.

Each real source reads its simulator, and four of the invoices it receives are doctored on the
way in (an amount "12,5", an amount too large for DECIMAL(18,4), a missing key, a string where an object is expected, a date
"0000-00-00"), so the real identification and mapping code meets them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from invoice_pipeline.pipeline import run_source
from invoice_pipeline.simulation import Knobs
from invoice_pipeline.sources import simulator_class, source_class
from invoice_pipeline.sources.base import SourceRecord, Window
from invoice_pipeline.warehouse import Warehouse

from .conftest import make_app
from .fake_source import FakeSource, fake_config_block, invoice

Doctor = Callable[[dict[str, Any]], None]


def _set(*path: str | int, value: Any) -> Doctor:
    def apply(payload: dict[str, Any]) -> None:
        node = payload
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return apply


def _delete(key: str) -> Doctor:
    return lambda payload: payload.pop(key)


# source type -> fault -> (how to doctor a payload, what the quarantine reason must mention)
FAULTS: dict[str, dict[str, tuple[Doctor, str]]] = {
    "oracle_occ": {
        "amount": (_set("EnteredAmount", value="12,5"), "EnteredAmount: not a number: '12,5'"),
        "huge": (_set("EnteredAmount", value="1000000000000000"), "EnteredAmount: '1000000000000000' is too large for its column"),
        "missing_key": (_delete("CustomerTransactionId"), "no invoice key: CustomerTransactionId: missing"),
        "wrong_type": (_set("receivablesInvoiceLines", value="oops"), "receivablesInvoiceLines"),
        "date": (_set("TransactionDate", value="0000-00-00"), "TransactionDate: not a valid date: '0000-00-00'"),
        "huge_line_number": (_set("receivablesInvoiceLines", "items", 0, "LineNumber", value=2**40),
                             "LineNumber: 1099511627776 is too large for its column (INTEGER)"),
    },
    "crmcom": {
        "amount": (_set("total_amount", value="12,5"), "total_amount: not a number: '12,5'"),
        "huge": (_set("total_amount", value="1000000000000000"), "total_amount: '1000000000000000' is too large for its column"),
        "missing_key": (_delete("id"), "no invoice key: id: missing"),
        "wrong_type": (_set("accounts_receivable", value="oops"), "accounts_receivable: expected an object"),
        "date": (_set("issued_on", value="0000-00-00"), "issued_on"),
    },
    "softwareone": {
        "amount": (_set("erpData", "invoiceTotal", value="12,5"), "erpData.invoiceTotal: not a number: '12,5'"),
        "huge": (_set("erpData", "invoiceTotal", value="1000000000000000"), "erpData.invoiceTotal: '1000000000000000' is too large for its column"),
        "missing_key": (_delete("id"), "no invoice key: id: missing"),
        "wrong_type": (_set("erpData", value="oops"), "erpData"),
        "date": (_set("erpData", "documentDate", value="0000-00-00"), "erpData.documentDate"),
    },
    "agvance": {
        "amount": (_set("InvoiceRecordHeaderDetails", "InvoiceTotal", value="12,5"), "InvoiceTotal: not a number: '12,5'"),
        "huge": (_set("InvoiceRecordHeaderDetails", "InvoiceTotal", value="1000000000000000"), "InvoiceTotal: '1000000000000000' is too large for its column"),
        "missing_key": (_delete("InvoiceNumber"), "InvoiceNumber"),
        "wrong_type": (_set("InvoiceRecordHeaderDetails", value="oops"), "InvoiceRecordHeaderDetails"),
        "date": (_set("InvoiceDate", value="0000-00-00"), "InvoiceDate"),
    },
}


@pytest.mark.parametrize("source_type", list(FAULTS))
def test_bad_records_are_quarantined_and_the_rest_loads(tmp_path: Path, source_type: str) -> None:
    faults = FAULTS[source_type]
    base = source_class(source_type)
    doctored: dict[str, tuple[str, dict[str, Any]]] = {}  # original id -> (fault, doctored payload)

    class DoctoredSource(base):  # type: ignore[misc, valid-type]
        """The real client and mapping; the first few invoices received are damaged in transit."""

        def extract(self, window: Window) -> Iterator[list[SourceRecord]]:
            pending = list(faults)
            for batch in super().extract(window):
                out = []
                for rec in batch:
                    if pending and rec.invoice_id not in doctored:
                        fault = pending.pop(0)
                        payload = copy.deepcopy(rec.payload)
                        faults[fault][0](payload)
                        doctored[rec.invoice_id] = (fault, payload)
                        rec = self.record_or_raw(payload)
                    out.append(rec)
                yield out

    with simulator_class(source_type)(size=40, knobs=Knobs(retry_after=0)) as sim:
        app = make_app(tmp_path, {"src": sim.source_config()})
        summary = run_source(app, "src", source=DoctoredSource("src", app.sources["src"]))
        expected = sim.expected()["invoices"]
    bad = len(faults)
    assert summary.status == "success" and len(doctored) == bad
    assert summary.quarantined == bad and summary.invoices_loaded == expected - bad
    with Warehouse(app.warehouse).reader() as con:
        loaded = {r[0] for r in con.execute("select invoice_id from main.invoices where source_name = 'src'").fetchall()}
        rows = con.execute("select invoice_id, reason, payload from src._quarantine").fetchall()
    # nothing silently dropped: every invoice is either loaded or quarantined, none both
    assert len(loaded) == expected - bad and not loaded & set(doctored)
    by_payload = {orjson.dumps(orjson.loads(p), option=orjson.OPT_SORT_KEYS): (i, r) for i, r, p in rows}
    assert len(rows) == bad
    for original_id, (fault, payload) in doctored.items():
        key = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
        assert key in by_payload, f"{fault}: raw record not kept as received"
        quarantined_id, reason = by_payload[key]
        assert faults[fault][1] in reason, (fault, reason)
        if fault != "missing_key":
            assert quarantined_id == original_id


def test_a_fixed_record_loads_on_the_next_run_and_the_old_version_stays_meanwhile(tmp_path: Path) -> None:
    """Quarantine never deletes: a bad new version leaves the loaded one; the fix replaces it."""
    app = make_app(tmp_path, {"fake": fake_config_block()})
    cfg = app.sources["fake"]
    run_source(app, "fake", source=FakeSource("fake", cfg, [invoice(1), invoice(2)]))
    bad_amount = invoice(1, updated="2025-02-01T00:00:00Z")
    bad_amount["lines"][0]["amount"] = "12,5"
    wrong_type = invoice(3, updated="2025-02-01T00:00:00Z")
    wrong_type["lines"] = "not a list of objects"
    keyless = invoice(4, updated="2025-02-01T00:00:00Z")
    keyless["id"] = ""
    second = run_source(app, "fake", source=FakeSource("fake", cfg, [bad_amount, wrong_type, keyless, invoice(5)]))
    assert second.invoices_extracted == 4 and second.invoices_loaded == 1 and second.quarantined == 3
    wh = Warehouse(app.warehouse)
    with wh.reader() as con:
        reasons = dict(con.execute("select coalesce(invoice_id, '<none>'), reason from fake._quarantine").fetchall())
        one = con.execute("select total_amount, last_modified_at from main.invoices where invoice_id = '1'").fetchone()
        ids = {r[0] for r in con.execute("select invoice_id from main.invoices").fetchall()}
    assert "amount: not a number: '12,5'" in reasons["1"]
    assert reasons["3"] and reasons["<none>"].startswith("record has no invoice key")
    assert ids == {"1", "2", "5"} and one[1].year == 2025 and one[1].month == 1  # the old version of 1 stays
    fixed = invoice(1, updated="2025-03-01T00:00:00Z", lines=3)
    run_source(app, "fake", source=FakeSource("fake", cfg, [fixed]))
    with wh.reader() as con:
        total, lines = con.execute(
            "select i.total_amount, count(l.line_id) from main.invoices i join main.invoice_lines l using (source_name, invoice_id)"
            " where invoice_id = '1' group by 1").fetchone()
    assert str(total) == fixed["total"] + "00" and lines == 3


HOSTILE = {
    'a"; DROP TABLE main.invoices; --': "quote-semicolon",
    "x'); DELETE FROM main.invoices; --": "single-quote",
    "../../../../escaped": "dot-dot",
    "/etc/passwd": "absolute",
    "..": "dot-dot-alone",
    "back\\slash\\..\\..": "backslash",
    "Rate": "upper", "rate": "lower", "RATE": "caps",
    "n" * 300 + "-end": "long",
    "new\nline\ttab": "control",
    "Größe °F": "unicode",
}


def hostile_invoice(n: int, updated: str) -> dict[str, Any]:
    payload = invoice(n, updated=updated)
    payload.update(HOSTILE)
    # arrays under hostile names become child tables, and so Parquet folders
    payload["../../../../escape_table"] = [{"id": 1, 'v"; DROP TABLE main.invoices; --': "child"}]
    payload["..\\..\\win"] = [{"id": 2, "Rate": "A", "rate": "b"}]
    payload['lines"; DROP TABLE main.invoice_lines; --'] = [{"id": 3}]
    payload["/abs"] = [{"id": 4}]
    payload["m" * 300] = [{"id": 5}]
    return payload


def test_hostile_field_names_cannot_inject_sql_or_escape_the_data_folder(tmp_path: Path) -> None:
    from invoice_pipeline.publish import publish

    data = tmp_path / "deep" / "er" / "data"  # deep enough that any '../' escape still lands in tmp_path
    app = make_app(tmp_path, {"fake": fake_config_block()})
    app = app.model_copy(update={"warehouse": app.warehouse.model_copy(update={
        "duckdb_path": data / "w.duckdb", "published_path": data / "published" / "w.duckdb",
        "parquet_dir": str(data / "parquet")})})
    cfg = app.sources["fake"]
    first = run_source(app, "fake", source=FakeSource("fake", cfg, [hostile_invoice(n, "2025-01-01T00:00:00Z")
                                                                    for n in range(1, 4)]))
    changed = hostile_invoice(2, "2025-02-01T00:00:00Z")
    changed["rATe"] = "fourth case"  # a new clash on a later run: ALTER TABLE path
    second = run_source(app, "fake", source=FakeSource("fake", cfg, [changed]))
    assert first.invoices_loaded == 3 and second.invoices_loaded == 1 and first.quarantined == second.quarantined == 0
    wh = Warehouse(app.warehouse)
    publish(app, wh)

    with wh.reader() as con:
        assert con.execute("select count(*) from main.invoices").fetchone()[0] == 3  # nothing dropped or deleted
        assert con.execute("select count(*) from main.invoice_lines").fetchone()[0] == 6
        columns = dict(con.execute(
            "select field_path, column_name from fake._columns where table_name = 'invoices'").fetchall())
        tables = {r[0] for r in con.execute("select table_name from fake._tables").fetchall()}
        row = con.execute("select * from fake.invoices where _invoice_id = '2'").fetchone()
        names = [d[0] for d in con.description]
    # every hostile field kept its own column (case clashes included) with its value, as text
    value_of = dict(zip(names, row))
    stored = {path: value_of[col] for path, col in columns.items()}
    for field, value in {**HOSTILE, "rATe": "fourth case"}.items():
        assert value in stored.values(), field
    lowered = [c.lower() for c in names]
    assert len(lowered) == len(set(lowered))  # unique even for a case-insensitive engine
    assert all(len(c) <= 128 for c in names)
    assert len(tables) >= 6  # root + lines + the five hostile arrays

    # the lake and every other file stay inside the data folder (symlinks resolved)
    root = data.resolve()
    outside = [p for p in tmp_path.rglob("*") if not p.resolve().is_relative_to(root) and p not in (
        tmp_path / "deep", tmp_path / "deep" / "er", data)]
    assert not outside, outside
    parquet_root = (data / "parquet").resolve()
    parquet_files = [p for p in (data / "parquet").rglob("*.parquet")]
    assert parquet_files and all(p.resolve().is_relative_to(parquet_root) for p in parquet_files)
    assert all(len(part) <= 255 for p in parquet_files for part in p.parts)
