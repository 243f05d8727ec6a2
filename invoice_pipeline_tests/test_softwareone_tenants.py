"""The real SoftwareOne client against a tampered simulator: odd paging, missing pagination
metadata, selectable fields the API omits, published statuses and Credit documents."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from invoice_pipeline import conformed
from invoice_pipeline.errors import SourceError
from invoice_pipeline.simulation import Knobs, PageTamper
from invoice_pipeline.sources.softwareone.simulator import PATH, SIMULATOR_CLASS
from invoice_pipeline_tests.test_softwareone_client import START, extract, make_source

PUBLISHED = {"Generated", "Issued", "Overdue", "Paid", "Cancelled"}


def fast(src):
    src.page_retry_pause = 0.0
    return src


def ids(records) -> set[str]:
    return {r.invoice_id for r in records}


# -- paging guards ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["empty", "short"])
def test_a_short_or_empty_page_once_is_requested_again_and_nothing_is_lost(kind: str):
    tamper = PageTamper(kind, page=1, times=1, keep=10)
    with SIMULATOR_CLASS(size=300, page_tamper=tamper) as s:
        src = fast(make_source(s, concurrency=2))
        assert ids(extract(src)) == {i.id for i in s.data.invoices}
        assert tamper.served == 1 and src.stats.extra["pages_rerequested"] == 1


@pytest.mark.parametrize("kind, got", [("empty", 0), ("short", 10)])
def test_a_page_that_stays_short_fails_the_run_naming_url_and_offset(kind: str, got: int):
    # Before: 210 of 300 (a short page) or 200 of 300 (an empty page) loaded, and the run succeeded.
    with SIMULATOR_CLASS(size=300, page_tamper=PageTamper(kind, page=1, keep=10)) as s:
        with pytest.raises(SourceError) as err:
            extract(fast(make_source(s, concurrency=2)))
    message = str(err.value)
    assert f"ended early at offset 100: the page holds {got} invoices" in message and "promises 100" in message
    assert "source 'swo'" in message and f"{PATH}?" in message and "offset=100" in message
    assert s.token not in message


def test_an_api_ignoring_offset_fails_instead_of_loading_page_one_three_times():
    with SIMULATOR_CLASS(size=300, page_tamper=PageTamper("ignore_offset")) as s:
        with pytest.raises(SourceError, match="repeated itself at offset 100.*ignore 'offset'"):
            extract(make_source(s, concurrency=1))


def test_without_pagination_metadata_the_walk_is_sequential_and_still_ends():
    with SIMULATOR_CLASS(size=250, pagination_meta=False) as s:
        src = make_source(s)
        assert ids(extract(src)) == {i.id for i in s.data.invoices}
        assert src.stats.pages == 3 and src.stats.extra["pagination_metadata"] is False
    # ...and a tenant that also ignores offset must not page forever (it did: an endless loop).
    with SIMULATOR_CLASS(size=250, pagination_meta=False, page_tamper=PageTamper("ignore_offset")) as s:
        with pytest.raises(SourceError, match="repeated itself"):
            extract(make_source(s))
        assert s.requests[PATH] == 2
        with pytest.raises(SourceError, match="repeated itself"):
            make_source(s).list_ids()


def test_a_deletion_while_paging_makes_the_client_read_the_list_again():
    with SIMULATOR_CLASS(size=300, knobs=Knobs(seed=6)) as s:
        src = make_source(s, page_size=50, concurrency=1)
        real_get, deleted = src._get, []

        def get_then_delete(rql, offset, limit, *select):
            body = real_get(rql, offset, limit, *select)
            if offset == 100 and not deleted:
                deleted.extend(s.mutate(deletes=3, seed=2)["deleted"])
            return body

        src._get = get_then_delete
        got = ids(extract(src))
        assert deleted and got >= {i.id for i in s.data.invoices}  # every invoice still there was read
        assert src.stats.extra["list_restarts"] == 1


# -- selectable fields -----------------------------------------------------------------------------
def test_the_client_selects_erp_data_and_price_so_nothing_is_quarantined():
    with SIMULATOR_CLASS(size=120) as s:
        src = make_source(s)
        records = extract(src)
        assert len(records) == 120
        for r in records:
            assert "erpData" in r.payload and "price" in r.payload and r.payload["$meta"]["omitted"] == []
            c = src.to_conformed(r.payload).invoice  # would raise MappingError (quarantine) without erpData
            assert c["currency_code"] and c["total_amount"] is not None


def test_erp_data_omitted_for_one_invoice_is_requested_again_or_fails_never_quarantined():
    with SIMULATOR_CLASS(size=120) as s:
        victim = s.data.invoices[7]
        s.omit_erp[victim.id] = 1
        src = make_source(s)
        by_id = {r.invoice_id: r for r in extract(src)}
        assert "erpData" in by_id[victim.id].payload and src.stats.extra["omitted_refetched"] == 1
        s.omit_erp[victim.id] = -1
        with pytest.raises(SourceError, match=f"{victim.id}: the API omitted 'erpData', 'price'"):
            extract(make_source(s))


# -- statuses and credits -------------------------------------------------------------------------
def test_published_statuses_only():
    with SIMULATOR_CLASS(size=300) as s:
        s.mutate(voids=3, new=2, seed=4)
        statuses = {r.payload["status"] for r in extract(make_source(s))}
    assert statuses == PUBLISHED  # Active is what older tenants send; this one follows the OpenAPI


def test_r2_credit_documents_come_with_positive_amounts_as_sent():
    with SIMULATOR_CLASS(size=300, knobs=Knobs(seed=9), documented_variants=True) as s:
        records = extract(make_source(s))
        expected = {**s.expected(), **s.expected_documents()}
    credits = [r.payload for r in records if r.payload["type"] == "Credit"]
    assert len(credits) == expected["credits"] >= 10
    assert all(p["erpData"]["invoiceTotal"] > 0 and all(ln["lineAmount"] > 0 for ln in p["lines"]) for p in credits)
    # expected() is the conformed truth: credits negated.
    signed = sum((Decimal(str(r.payload["erpData"]["invoiceTotal"])) * (-1 if r.payload["type"] == "Credit" else 1)
                  for r in records), Decimal(0))
    assert signed == expected["total_amount"]


def test_r2_credit_documents_are_served_by_default_and_signed_by_the_mapping():
    with SIMULATOR_CLASS(size=200) as s:
        records = extract(make_source(s))
        src = make_source(s)
        total = sum(conformed.finalize(src.to_conformed(r.payload), derive_installment=True).invoice["total_amount"]
                    for r in records)
        assert {r.payload["type"] for r in records} == {"Debit", "Credit"} and total == s.expected()["total_amount"]


def test_window_filter_still_matches_with_the_new_select():
    with SIMULATOR_CLASS(size=200, knobs=Knobs(seed=2)) as s:
        since = datetime(2025, 6, 1, tzinfo=UTC)
        assert len(extract(make_source(s), since)) == s.expected(since)["invoices"]
        assert len(extract(make_source(s), START)) == 200
