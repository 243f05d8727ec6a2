"""The real Oracle OCC client against a tampered simulator: odd paging, a list filter `q` the tenant
refuses or ignores, backfill windows, and the documents with freight and credit memos."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from invoice_pipeline.errors import SourceError
from invoice_pipeline.simulation import Knobs, PageTamper
from invoice_pipeline.sources.base import Window
from invoice_pipeline.sources.oracle_occ.client import FILTER, LIST_FIELDS, LIST_ONLY_IGNORED, LIST_ONLY_REFUSED
from invoice_pipeline.sources.oracle_occ.simulator import SIMULATOR_CLASS
from invoice_pipeline_tests.test_oracle_occ_client import LIST, make_source

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def run(source, window: Window | None = None) -> dict[str, dict]:
    window = window or Window(source.config.start_date, datetime.now(UTC))
    return {r.invoice_id: r.payload for batch in source.extract(window) for r in batch}


def fast(source):
    source.page_retry_pause = 0.0
    return source


def detail_calls(sim) -> int:
    return sum(n for path, n in sim.requests.items() if path.startswith(LIST + "/"))


# -- paging guards -------------------------------------------------------------------------------
def test_one_empty_page_mid_listing_is_requested_again_and_nothing_is_lost():
    tamper = PageTamper("empty", page=2, times=1)
    with SIMULATOR_CLASS(size=200, page_tamper=tamper) as sim, fast(make_source(sim)) as source:
        assert len(run(source)) == 200
        assert tamper.served == 1 and source.stats.extra["pages_rerequested"] == 1


def test_an_empty_page_that_stays_empty_fails_the_run_naming_url_and_offset():
    # Before: `items: []` with `hasMore: true` ended the walk silently at 50 of 200.
    with SIMULATOR_CLASS(size=200, page_tamper=PageTamper("empty", page=2)) as sim, fast(make_source(sim)) as source:
        with pytest.raises(SourceError) as err:
            run(source)
        message = str(err.value)
        assert "ended early at offset 50" in message and "hasMore: true" in message
        assert "source 'oracle_test'" in message and f"{LIST}?" in message and "offset=50" in message
        assert sim.password not in message


def test_a_short_last_page_below_total_results_fails_unless_a_retry_fixes_it():
    with SIMULATOR_CLASS(size=200, page_tamper=PageTamper("short", page=3, keep=10)) as sim:
        with fast(make_source(sim)) as source, pytest.raises(SourceError, match="ends at 85 of totalResults 200"):
            run(source)
    with SIMULATOR_CLASS(size=200, page_tamper=PageTamper("short", page=3, keep=10, times=2)) as sim:
        with fast(make_source(sim)) as source:
            assert len(run(source)) == 200
            assert source.stats.extra["pages_rerequested"] == 2


def test_an_api_ignoring_offset_ends_with_a_clear_error_not_an_endless_walk():
    # Before: 25,500 list calls in 30 s.
    with SIMULATOR_CLASS(size=200, page_tamper=PageTamper("ignore_offset")) as sim, make_source(sim) as source:
        with pytest.raises(SourceError, match="repeated itself at offset 25.*ignore 'offset'"):
            run(source)
        assert sim.requests[LIST] <= 3  # probe, first page, the repeat
    with SIMULATOR_CLASS(size=200, page_tamper=PageTamper("ignore_offset")) as sim, make_source(sim) as source:
        with pytest.raises(SourceError, match="repeated itself"):
            source.list_ids()


# -- q refused / ignored ---------------------------------------------------------------------------
@pytest.mark.parametrize("q_mode, mode", [("refuse", LIST_ONLY_REFUSED), ("ignore", LIST_ONLY_IGNORED)])
def test_q_refused_or_ignored_is_detected_and_the_window_still_holds(q_mode: str, mode: str):
    start, end = datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 4, 1, tzinfo=UTC)
    with SIMULATOR_CLASS(size=200, q_mode=q_mode, now=NOW) as sim, make_source(sim) as source:
        payloads = run(source, Window(start, end))
        want = sim.expected(start)["invoices"] - sim.expected(end)["invoices"]
        assert 0 < len(payloads) == want
        assert all("2025-03-01" <= p["LastUpdateDate"] < "2025-04-01" for p in payloads.values())
        extra = source.stats.extra
        assert extra["list_mode"] == mode and extra["ids_listed"] == 200
        # Without stored versions every id created before the window's end needs its detail.
        assert extra["ids_new"] == extra["detail_calls"] == 200 - extra["ids_created_after_window"]
        assert extra["outside_window"] == extra["detail_calls"] - want
        assert source.list_ids() == set(sim.invoice_ids())  # a superset is what reconciliation allows


def test_list_only_mode_fetches_details_only_of_new_or_changed_invoices():
    with SIMULATOR_CLASS(size=150, q_mode="ignore") as sim:
        with make_source(sim) as source:
            first = run(source)
        stored = {i: {f: p.get(f) for f in LIST_FIELDS} for i, p in first.items()}
        asked: list[tuple] = []

        def lookup(ids, fields):
            asked.append((tuple(ids), tuple(fields)))
            return {i: stored[i] for i in ids if i in stored}

        touched = sim.mutate(updates=3, new=2, payments=2, seed=5)
        sim.requests.clear()
        with make_source(sim) as source:
            source.stored_fields = lookup
            payloads = run(source, Window(source.config.start_date, datetime.now(UTC)))
            extra = source.stats.extra
        assert asked and all(fields == LIST_FIELDS for _, fields in asked)
        assert extra["ids_new"] == 2 and extra["ids_changed"] == 5 and extra["ids_unchanged"] == 145
        assert detail_calls(sim) == 7
        # Payments do not move LastUpdateDate: still inside this window (from start_date), they load.
        assert set(payloads) == {i for ids in touched.values() for i in ids}


def test_filter_mode_backfill_fetches_only_the_window_and_writes_only_its_versions():
    # Before: a one-month backfill read every invoice updated since its start (468 where 9 were in it).
    start, end = datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 4, 1, tzinfo=UTC)
    with SIMULATOR_CLASS(size=300, now=NOW) as sim, make_source(sim) as source:
        payloads = run(source, Window(start, end))
        want = sim.expected(start)["invoices"] - sim.expected(end)["invoices"]
        assert 0 < len(payloads) == want == detail_calls(sim)
        assert source.stats.extra["list_mode"] == FILTER and source.stats.extra["outside_window"] == 0


# -- freight and credit memos ---------------------------------------------------------------------
def _cents(value: Any) -> Decimal:
    return Decimal(value or 0)


def test_documented_variants_freight_and_credit_memos_as_oracle_sends_them():
    with SIMULATOR_CLASS(size=300, knobs=Knobs(seed=3), documented_variants=True) as sim, make_source(sim) as source:
        payloads = run(source)
        expected = {**sim.expected(), **sim.expected_documents()}
    freight = [p for p in payloads.values() if p["FreightAmount"] is not None]
    credits = [p for p in payloads.values() if p["TransactionType"] == "Credit Memo"]
    assert len(freight) >= 10 and len(credits) == expected["credit_memos"] >= 5
    assert sum(_cents(p["FreightAmount"]) for p in payloads.values()) == expected["freight_amount"] != 0
    for p in payloads.values():
        lines = p["receivablesInvoiceLines"]
        if lines["hasMore"]:
            continue
        line_sum = sum(_cents(ln["LineAmount"]) for ln in lines["items"])
        taxes = [t for ln in lines["items"] for t in ln["receivablesInvoiceLineTaxLines"]["items"]]
        tax_sum = sum(_cents(t["TaxAmount"]) for t in taxes)
        assert _cents(p["EnteredAmount"]) == line_sum + tax_sum + _cents(p["FreightAmount"]), p["CustomerTransactionId"]
        installments = p["receivablesInvoiceInstallments"]["items"]
        assert sum(_cents(i["InstallmentFreightAmountOriginal"]) for i in installments) == _cents(p["FreightAmount"])
        assert sum(_cents(i["OriginalAmount"]) for i in installments) == _cents(p["EnteredAmount"])
    for p in credits:
        assert _cents(p["EnteredAmount"]) < 0 and _cents(p["InvoiceBalanceAmount"]) <= 0
        assert all(_cents(ln["LineAmount"]) < 0 for ln in p["receivablesInvoiceLines"]["items"])
    assert {p["InvoiceStatus"] for p in payloads.values()} == {"Complete", "Incomplete", "Void"}
    assert sum(_cents(p["EnteredAmount"]) for p in payloads.values()) == expected["total_amount"]


def test_documented_variants_are_served_by_default():
    """Freight and credit memos, as the vendor's documents show real tenants send them."""
    with SIMULATOR_CLASS(size=150, knobs=Knobs(seed=3)) as sim, make_source(sim) as source:
        payloads = run(source)
    assert any(p["FreightAmount"] is not None for p in payloads.values())
    assert any(p["TransactionType"] == "Credit Memo" for p in payloads.values())
