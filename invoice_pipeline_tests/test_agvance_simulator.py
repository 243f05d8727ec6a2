"""The Agvance simulator on its own: shape, data realism, API errors, mutate/expected, speed."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import requests

from invoice_pipeline.simulation import Knobs
from invoice_pipeline.sources.agvance.simulator import (
    API_KEY,
    DATABASE_ID,
    LONG_COLUMN,
    PASSWORD,
    SIMULATOR_CLASS,
    TENANT_COLUMNS,
    USERNAME,
)

RECORD_KEYS = ["InvoiceDate", "InvoiceLocation", "InvoiceNumber", "InvoiceRecordHeaderDetails",
               "InvoiceRecordSplitDetails", "InvoiceRecordLineItemDetails", "InvoiceTaxCodeDetails",
               "InvoiceBooksDetails", "InvoiceBlendsDetails", "InvoiceDelivsDetails", "InvoiceEnergyDetails",
               "InvoiceApplicatorDetails"]
HEADER_KEYS = ["InvoiceGuid", "CustomerID", "CustomerName", "InvoiceTotal", "SubTotal", "TaxTotal", "AmountPaid",
               "BalanceDue", "DueDate", "Terms", "Void", "LastModifiedUtc"]
LOGIN = {"UserName": USERNAME, "Password": PASSWORD, "DatabaseID": DATABASE_ID}


@pytest.fixture(scope="module")
def sim():
    with SIMULATOR_CLASS(size=400, knobs=Knobs(retry_after=0), max_results=50) as s:
        yield s


def login(sim) -> str:
    body = requests.post(sim.base_url + "/Login", json=LOGIN, headers={"ApiKey": API_KEY}, timeout=5).json()
    assert body["Status"] == "Success" and body["Message"] == ""
    return body["SessionID"]


def list_call(sim, session: str, after: str = "", before: str = "", items=({},)) -> requests.Response:
    return requests.post(
        sim.base_url + "/Invoice/GetInvoicesList",
        params={"lastModifiedOnOrAfterUtc": after, "lastModifiedOnOrBeforeUtc": before},
        json={"InvoiceListRequestItems": list(items)}, headers={"ApiKey": API_KEY, "SessionID": session}, timeout=5,
    )


def test_record_shape_field_by_field(sim):
    p = next(iter(sim.invoices.values())).payload()
    assert list(p) == RECORD_KEYS and list(p["InvoiceRecordHeaderDetails"]) == HEADER_KEYS
    line = p["InvoiceRecordLineItemDetails"][0]
    assert list(line) == ["LineNumber", "ProductID", "ProductName", "Quantity", "UnitOfMeasure", "UnitPrice",
                          "Extension"]
    datetime.strptime(p["InvoiceDate"], "%m/%d/%Y")
    datetime.strptime(p["InvoiceRecordHeaderDetails"]["LastModifiedUtc"], "%Y-%m-%dT%H:%M:%S")
    taxed = next(i.payload() for i in sim.invoices.values() if i.tax_rows())
    assert list(taxed["InvoiceTaxCodeDetails"][0]) == ["LineNumber", "TaxCode", "Description", "TaxRate",
                                                       "TaxableAmount", "TaxAmount"]
    split = next(i.payload() for i in sim.invoices.values() if i.splits)
    rows = split["InvoiceRecordSplitDetails"]
    assert list(rows[0]) == ["CustomerID", "CustomerName", "SplitPercent", "Amount"]
    total = Decimal(repr(split["InvoiceRecordHeaderDetails"]["InvoiceTotal"]))
    assert sum(Decimal(repr(r["Amount"])) for r in rows) == total
    assert sum(r["SplitPercent"] for r in rows) == 100


def test_tenant_arrays_have_hostile_column_names(sim):
    seen: dict[str, set[str]] = {name: set() for name in TENANT_COLUMNS}
    for inv in sim.invoices.values():
        for name, rows in inv.payload().items():
            if name in seen:
                for row in rows:
                    seen[name] |= set(row)
    assert all(seen.values()), "every tenant array has rows somewhere"
    names = set().union(*seen.values())
    assert {"Rate", "rate", "Temp", "temp", "Größe", "Température °F", LONG_COLUMN} <= names
    assert any('"' in n for n in names) and any(";" in n for n in names) and any(" " in n for n in names)
    assert len(LONG_COLUMN) > 128


def test_data_realism(sim):
    invs = list(sim.invoices.values())
    numbers = Counter(i.number for i in invs)
    assert len({i.location for i in invs}) >= 3 and max(numbers.values()) > 1  # numbers overlap across locations
    per_second = Counter(i.modified for i in invs)
    assert max(per_second.values()) >= 10 and sum(n for n in per_second.values() if n > 1) >= len(invs) // 5
    assert max(per_second.values()) <= sim.max_results, "every second stays fetchable"
    assert min(i.modified for i in invs) >= datetime(2024, 1, 2, tzinfo=UTC)
    assert max(i.modified for i in invs) <= sim.created - timedelta(hours=1)
    assert any(i.void for i in invs) and any(i.amounts()[4] == 0 for i in invs if not i.void)
    for inv in invs:  # consistent data: lines + tax == total, balance = total - paid
        sub, tax, total, paid, balance = inv.amounts()
        assert sub + tax == total and (inv.void or total - paid == balance)


def _timeless(sim) -> list[tuple]:
    """Everything but the dates (those follow the creation time, which two sims may not share)."""
    return [(k, i.guid, i.customer, i.amounts(), i.tax_rows(), [(ln.product, ln.quantity, ln.price) for ln in i.lines],
             i.splits, i.void) for k, i in sim.invoices.items()]


def test_deterministic_from_seed():
    a, b, c = (SIMULATOR_CLASS(size=50, knobs=Knobs(seed=seed)) for seed in (9, 9, 10))
    try:
        assert _timeless(a) == _timeless(b) and _timeless(a) != _timeless(c)
    finally:
        for s in (a, b, c):
            s._httpd.server_close()


def test_inclusive_bounds_count_string_and_too_large(sim):
    session = login(sim)
    t, n = Counter(i.modified for i in sim.invoices.values()).most_common(1)[0]
    stamp = t.strftime("%Y-%m-%dT%H:%M:%S")
    body = list_call(sim, session, stamp, stamp).json()
    assert body["Status"] == "Success" and body["Count"] == str(n) == str(len(body["InvoiceRecords"]))
    body = list_call(sim, session).json()  # no bounds: everything, refused
    assert body == {"Status": "Error", "Message": "Result set too large: narrow the date range", "Count": "0",
                    "InvoiceRecords": []}
    key = next(iter(sim.invoices))
    loc = sim.invoices[key].location
    body = list_call(sim, session, stamp, stamp, items=[{"locationId": loc}]).json()
    assert all(r["InvoiceLocation"] == loc for r in body["InvoiceRecords"])
    bad = list_call(sim, session, "2024-01-01 00:00", stamp)
    assert bad.status_code == 200 and bad.json()["Status"] == "Error"


def test_auth_errors(sim):
    r = requests.post(sim.base_url + "/Login", json=LOGIN, headers={"ApiKey": "nope"}, timeout=5)
    assert r.status_code == 401 and r.json()["Message"] == "Invalid ApiKey"
    r = requests.post(sim.base_url + "/Login", json={**LOGIN, "Password": "x"}, headers={"ApiKey": API_KEY}, timeout=5)
    assert r.status_code == 200 and r.json()["Status"] == "Error"
    assert list_call(sim, "not-a-session").status_code == 401
    with SIMULATOR_CLASS(size=5, knobs=Knobs(token_lifetime=0.1)) as short:
        session = login(short)
        assert list_call(short, session, "2024-01-01T00:00:00").status_code == 200
        time.sleep(0.2)
        r = list_call(short, session, "2024-01-01T00:00:00")
        assert r.status_code == 401 and r.json() == {"Status": "Error", "Message": "Session expired", "Count": "0",
                                                    "InvoiceRecords": []}


def test_inconsistent_rate():
    with SIMULATOR_CLASS(size=300, knobs=Knobs(inconsistent_rate=0.2)) as s:
        bad = [i for i in s.invoices.values() if sum(i.amounts()[:2]) != i.amounts()[2]]
        assert 30 <= len(bad) <= 90
        e = s.expected()
        assert e["total_amount"] != e["line_amount"] + e["tax_amount"]


def test_mutate_and_expected(sim):
    before = sim.expected()
    old = {k: (len(i.lines), i.amounts()[2]) for k, i in sim.invoices.items()}
    touched = sim.mutate(updates=4, new=3, voids=2, delete_lines=2, seed=11)
    assert {k: len(v) for k, v in touched.items()} == {"updated": 4, "new": 3, "voided": 2, "lines_deleted": 2}
    now = max(i.modified for i in sim.invoices.values())
    assert now > sim.created - timedelta(minutes=5) and now.microsecond == 0
    since = sim.expected(now)
    assert since["invoices"] == 11
    assert sim.expected()["invoices"] == before["invoices"] + 3
    for key in touched["updated"]:
        assert sim.invoices[key].amounts()[2] > old[key][1]
        assert sum(sim.invoices[key].amounts()[:2]) == sim.invoices[key].amounts()[2]
    for key in touched["lines_deleted"]:
        assert len(sim.invoices[key].lines) == old[key][0] - 1
    assert all(sim.invoices[k].payload()["InvoiceRecordHeaderDetails"]["Void"] for k in touched["voided"])
    # Served too: the index was rebuilt.
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S")
    body = list_call(sim, login(sim), stamp).json()
    assert int(body["Count"]) == 11


