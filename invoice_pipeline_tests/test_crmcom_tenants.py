"""CRM.COM client against tampered simulators: page caps, pre-R13 paging, glitches, refused
filters, tax-only items and the repeated hour at the end of DST (docs/SOURCES.md)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from invoice_pipeline.errors import SourceError
from invoice_pipeline.simulation import Knobs
from invoice_pipeline.sources.base import SourceRecord, Window
from invoice_pipeline.sources.crmcom.client import CrmcomConfig, CrmcomSource
from invoice_pipeline.sources.crmcom.simulator import CrmcomSimulator

START = datetime(2024, 1, 1, tzinfo=UTC)
LIST = "/crmapi/rest/v2/invoices/list"
AR_LIST = "/crmapi/rest/v2/accounts_receivable/list"


def source(sim: CrmcomSimulator, **overrides: Any) -> CrmcomSource:
    return CrmcomSource("crm", CrmcomConfig.model_validate({**sim.source_config(), **overrides}))


def extract(src: CrmcomSource, start: datetime = START, end: datetime | None = None) -> list[SourceRecord]:
    return [r for batch in src.extract(Window(start, end or datetime.now(UTC))) for r in batch]


def assert_everything(sim: CrmcomSimulator, records: list[SourceRecord]) -> None:
    live = {inv.id for inv in sim.invoices if inv.idx not in sim.deleted}
    assert len(records) == len({r.invoice_id for r in records})
    assert {r.invoice_id for r in records} == live


def test_page_cap_below_what_is_asked_reads_every_page() -> None:
    # 450 invoices, a quarter in one account: 100 per page while we ask 200 used to end after one page.
    with CrmcomSimulator(size=450, knobs=Knobs(retry_after=0), page_cap=100) as sim:
        assert len(sim._by_ar[0]) > 100
        src = source(sim, page_size=200)
        records = extract(src)
        assert_everything(sim, records)
        assert src.stats.extra["server_page_cap"] == 100
        assert src.stats.extra["listings_offset_ignored"] == 0


def test_pre_r13_server_returning_everything_ends_and_loses_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with CrmcomSimulator(size=900, knobs=Knobs(retry_after=0), paging="ignored") as sim:
        accounts = len(sim.accounts)
        src = source(sim, page_size=200, concurrency=1)
        with caplog.at_level(logging.INFO, "invoice_pipeline.crmcom"):
            records = extract(src)
        assert_everything(sim, records)
        # Each listing ends after a few calls (it used to run for ever): the first one learns that the
        # server ignores offset, later ones read whole lists (one call, two for the big account).
        assert sim.requests[LIST] <= accounts + 4 and sim.requests[AR_LIST] <= 3
        assert src.stats.extra["listings_offset_ignored"] >= 1
        assert "ignores offset" in caplog.text
        assert "distinct ids new to their listing" in caplog.text  # the operator's counts


def test_server_that_ignores_offset_but_honours_the_size_is_read_whole() -> None:
    with CrmcomSimulator(size=900, knobs=Knobs(retry_after=0), paging="no_offset") as sim:
        assert len(sim._by_ar[0]) == 225
        records = extract(source(sim, page_size=50, concurrency=2))
        assert_everything(sim, records)


def test_server_that_ignores_offset_and_caps_at_the_cap_it_showed_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    # The answer ends exactly at a page cap this run has seen: what lies beyond cannot be read.
    with CrmcomSimulator(size=900, knobs=Knobs(retry_after=0), paging="no_offset", page_cap=100) as sim:
        src = source(sim, page_size=200, concurrency=1)
        src._server_cap = 100
        with pytest.raises(SourceError, match=r"ignores offset.*exactly 100 items.*cannot be read"):
            extract(src)


def test_an_empty_page_mid_listing_is_asked_again() -> None:
    with CrmcomSimulator(size=200, knobs=Knobs(retry_after=0), empty_pages=3) as sim:
        src = source(sim, page_size=10, concurrency=2)
        records = extract(src)
        assert_everything(sim, records)  # 152 of 200, silently, before
        assert sim.empty_pages == 0
        assert src.stats.extra["empty_pages_not_end"] == 3
        assert src.stats.extra["empty_pages_rechecked"] >= 3


def test_refused_unfiltered_account_list_falls_back_to_each_life_cycle_state() -> None:
    with CrmcomSimulator(size=600, knobs=Knobs(retry_after=0), ar_filter_required=True) as sim:
        states = {a["life_cycle_state"] for a in sim.accounts}
        assert len(states) > 1
        src = source(sim, page_size=5)
        assert_everything(sim, extract(src))
        assert src.stats.extra["account_listing"] == "per life_cycle_state"
        assert src.stats.extra["accounts_receivable"] == len(sim.accounts)
        assert len(src.list_ids()) == 600  # the fallback is remembered, not asked for again
        assert sim.requests[AR_LIST] > 0


def test_unfiltered_refusal_is_not_hidden_when_filters_fail_too() -> None:
    with CrmcomSimulator(size=30, knobs=Knobs(retry_after=0), ar_filter_required=True) as sim:
        sim.inject("/accounts_receivable/list", "MISSING_PARAMETER", "one filter required")
        sim.inject("/accounts_receivable/list", "GENERAL_ERROR", "Database unavailable")
        with pytest.raises(SourceError, match="ACTIVE accounts receivable.*GENERAL_ERROR"):
            extract(source(sim))


def test_tax_only_items_are_served_by_default() -> None:
    """R12+ items whose tax is only in their own tax_amount, as the vendor's documents show them."""
    with CrmcomSimulator(size=300, knobs=Knobs(retry_after=0), tax_only_items=False) as plain:
        assert not any(inv.tax_only for inv in plain.invoices)
        plain_ids = [inv.id for inv in plain.invoices]
    with CrmcomSimulator(size=300, knobs=Knobs(retry_after=0)) as sim:
        assert [inv.id for inv in sim.invoices] == plain_ids  # same data set, only the tax shape differs
        tax_only = [inv for inv in sim.invoices if inv.tax_only]
        assert 20 < len(tax_only) < 90 and not any(inv.legacy for inv in tax_only)
        records = extract(source(sim))
        assert_everything(sim, records)
        by_id = {r.invoice_id: r.payload for r in records}
        for inv in tax_only:
            payload = by_id[inv.id]
            assert payload["vat_amount"] is None and payload["tax_amount"] is not None
            for item in payload["invoice_item_set"]:
                assert "applied_tax_rates" not in item and item["vat_rate"] is None and item["vat_amount"] is None
                assert item["tax_amount"] is not None
        states = {r.payload["life_cycle_state"] for r in records}
        assert states == {"DRAFT", "POSTED", "REJECTED", "CANCELLED"}


def test_update_in_the_repeated_hour_at_the_end_of_dst_is_not_missed() -> None:
    """2025-10-26 in Europe/Nicosia: 04:00 EEST becomes 03:00 EET, so 03:30 happens twice. An update at
    01:30Z (the second 03:30) was read as 00:30Z and fell before the next run's window."""
    with CrmcomSimulator(size=60, knobs=Knobs(retry_after=0)) as sim:
        inv = sim.invoices[5]
        first_run_end = datetime(2025, 10, 26, 1, 0, tzinfo=UTC)
        inv.updated = datetime(2025, 10, 26, 0, 10, tzinfo=UTC)  # before the first run ends (local 03:10 EEST)
        sim._cache.clear()
        first = extract(source(sim), end=first_run_end)
        assert inv.id in {r.invoice_id for r in first}

        inv.updated = datetime(2025, 10, 26, 1, 30, tzinfo=UTC)  # after it: local 03:30 EET, the second one
        sim._cache.clear()
        payload = next(r.payload for r in first if r.invoice_id == inv.id)
        assert payload["log_information"]["updated_date"] == "2025-10-26T03:10:00"
        second_start = first_run_end - timedelta(minutes=10)  # cursor minus lookback
        src = source(sim)
        second = extract(src, start=second_start, end=datetime(2025, 10, 26, 2, 0, tzinfo=UTC))
        kept = {r.invoice_id: r for r in second}
        assert inv.id in kept
        assert kept[inv.id].payload["log_information"]["updated_date"] == "2025-10-26T03:30:00"
        # Stored deterministically as the first reading (fold=0, as the mapping reads it).
        assert kept[inv.id].last_modified_at == datetime(2025, 10, 26, 0, 30, tzinfo=UTC)
        assert src.to_conformed(kept[inv.id].payload).invoice["last_modified_at"] == kept[inv.id].last_modified_at
        assert len(second) == 1  # nothing else is near the window


def test_skipped_hour_at_the_start_of_dst_is_not_missed() -> None:
    # 2025-03-30 in Nicosia: 03:00 EET jumps to 04:00 EEST; a server may still write 03:30.
    with CrmcomSimulator(size=20, knobs=Knobs(retry_after=0)) as sim:
        src = source(sim)
        record = src.identify({"id": "x", "log_information": {"updated_date": "2025-03-30T03:30:00"}})
        window = Window(datetime(2025, 3, 30, 0, 20, tzinfo=UTC), datetime(2025, 3, 30, 0, 40, tzinfo=UTC))
        assert not window.start <= record.last_modified_at <= window.end
        assert src._in_window(record, window)  # the other reading (00:30Z) is inside
        far = Window(datetime(2025, 3, 29, tzinfo=UTC), datetime(2025, 3, 29, 1, tzinfo=UTC))
        assert not src._in_window(record, far)


def test_a_server_wrongly_taken_for_pre_r13_is_still_read_to_the_end() -> None:
    # A repeat misjudged (e.g. a list shifting under us) must not turn a 500-item cap into the end.
    with CrmcomSimulator(size=2100, knobs=Knobs(retry_after=0)) as sim:
        assert len(sim._by_ar[0]) == 525
        src = source(sim, page_size=200, concurrency=2)
        src._offset_ignored = True
        assert_everything(sim, extract(src))


def test_simulator_knobs_over_raw_http() -> None:
    import requests

    with CrmcomSimulator(size=450, knobs=Knobs(retry_after=0), page_cap=100, ar_filter_required=True) as sim:
        token = requests.post(sim.base_url + "/authentication/token", json={
            "username": "sim_user", "password": "sim_password", "organisation": "ACME"}, timeout=10).json()["data"]["token"]

        def get(path: str, **params: Any) -> dict[str, Any]:
            return requests.get(sim.base_url + path, params={"token": token, **params}, timeout=10).json()

        assert get("/accounts_receivable/list")["status"]["code"] == "MISSING_PARAMETER"
        active = get("/accounts_receivable/list", life_cycle_state="ACTIVE")["data"]
        assert active and {a["life_cycle_state"] for a in active} == {"ACTIVE"}
        ident = f"id={sim.accounts[0]['id']}"
        page = get("/invoices/list", accounts_receivable_identifier=ident, number_of_results=200, offset=0)["data"]
        assert len(page) == 100  # capped below what was asked
        sim.paging = "ignored"
        everything = get("/invoices/list", accounts_receivable_identifier=ident, number_of_results=5, offset=50)["data"]
        assert len(everything) == len(sim._by_ar[0])
        sim.paging = "no_offset"
        first = get("/invoices/list", accounts_receivable_identifier=ident, number_of_results=5, offset=50)["data"]
        assert [i["id"] for i in first] == [sim.invoices[i].id for i in sim._by_ar[0][:5]]
        sim.paging, sim.empty_pages = "r13", 1
        assert get("/invoices/list", accounts_receivable_identifier=ident, number_of_results=5, offset=5)["data"] == []
        assert len(get("/invoices/list", accounts_receivable_identifier=ident, number_of_results=5, offset=5)["data"]) == 5
    with pytest.raises(ValueError, match="paging"):
        CrmcomSimulator(size=10, paging="r12")
