"""SoftwareOne client against its simulator: RQL window, $meta paging, omitted lines, auth, retries, e2e sums."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from invoice_pipeline import conformed
from invoice_pipeline.config import parse_config
from invoice_pipeline.errors import ConfigError, SourceError
from invoice_pipeline.http import HttpClient
from invoice_pipeline.simulation import Knobs
from invoice_pipeline.sources.base import Window
from invoice_pipeline.sources.softwareone.client import SoftwareOneConfig, SoftwareOneSource, rql_time, window_filter
from invoice_pipeline.sources.softwareone.simulator import SIMULATOR_CLASS

START = datetime(2024, 1, 1, tzinfo=UTC)


def make_source(sim, fast_retries: bool = False, **overrides) -> SoftwareOneSource:
    cfg = SoftwareOneConfig.model_validate({**sim.source_config(), **overrides})
    http = None
    if fast_retries:
        http = HttpClient("swo", sim.base_url, max_retries=8, backoff_initial=0.01, backoff_max=0.05,
                          secrets=cfg.secrets(), pool_size=cfg.concurrency)
    return SoftwareOneSource("swo", cfg, http)


def extract(src: SoftwareOneSource, start: datetime = START, end: datetime | None = None) -> list:
    return [r for batch in src.extract(Window(start, end or datetime.now(UTC))) for r in batch]


@pytest.fixture(scope="module")
def sim():
    with SIMULATOR_CLASS(size=230, knobs=Knobs(seed=11)) as s:
        yield s


# -- RQL and config ------------------------------------------------------------------------------
def test_rql_time_rounds_to_milliseconds():
    ts = datetime(2025, 1, 31, 23, 59, 59, 123456, tzinfo=UTC)
    assert rql_time(ts) == '"2025-01-31T23:59:59.123Z"'
    assert rql_time(ts, round_up=True) == '"2025-01-31T23:59:59.124Z"'
    exact = datetime(2025, 1, 31, 23, 59, 59, tzinfo=UTC)
    assert rql_time(exact, round_up=True) == '"2025-01-31T23:59:59.000Z"'
    cet = datetime(2025, 2, 1, 0, 59, 59, tzinfo=UTC).astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert rql_time(cet) == '"2025-02-01T00:59:59.000Z"'


def test_window_filter_catches_never_updated_and_bounds_created():
    rql = window_filter(Window(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 31, 23, 59, 59, tzinfo=UTC)))
    assert rql == ('and(or(ge(audit.updated.at,"2025-01-01T00:00:00.000Z"),ge(audit.created.at,"2025-01-01T00:00:00.000Z")),'
                   'le(audit.created.at,"2025-01-31T23:59:59.000Z"))')


def test_config_keys_and_secret():
    cfg = parse_config({"sources": {"swo": {"type": "softwareone", "base_url": "https://api.platform.softwareone.com/",
                                            "api_token": "idt:TKN-1", "start_date": "2024-01-01T00:00:00Z"}}})
    src_cfg = cfg.sources["swo"]
    assert isinstance(src_cfg, SoftwareOneConfig) and "TKN" not in repr(src_cfg) and src_cfg.secrets() == ["idt:TKN-1"]
    with pytest.raises(ConfigError, match="sources.swo.api_token"):
        parse_config({"sources": {"swo": {"type": "softwareone", "base_url": "https://x", "start_date": "2024-01-01"}}})
    with pytest.raises(ConfigError, match="sources.swo.token"):
        parse_config({"sources": {"swo": {"type": "softwareone", "base_url": "https://x", "api_token": "t", "token": "t",
                                          "start_date": "2024-01-01"}}})


# -- end to end ----------------------------------------------------------------------------------
def test_extract_everything_matches_expected_exactly(sim):
    src = make_source(sim)
    records = extract(src)
    assert len(records) == len({r.invoice_id for r in records}) == 230
    inv = lines = tax_lines = inst = 0
    total = net = tax = Decimal(0)
    for rec in records:
        c = conformed.finalize(src.to_conformed(rec.payload), derive_installment=True)
        h = c.invoice
        assert h["net_amount"] + h["tax_amount"] == h["total_amount"], rec.invoice_id
        assert rec.last_modified_at == sim.data.by_id[rec.invoice_id].last_modified == h["last_modified_at"]
        inv, lines, tax_lines, inst = inv + 1, lines + len(c.lines), tax_lines + len(c.tax_lines), inst + len(c.installments)
        total, net, tax = total + h["total_amount"], net + h["net_amount"], tax + h["tax_amount"]
    exp = sim.expected()
    assert (inv, lines, tax_lines, inst) == (exp["invoices"], exp["lines"], exp["tax_lines"], exp["invoices"])
    assert (total, net, tax) == (exp["total_amount"], exp["line_amount"], exp["tax_amount"])
    assert src.stats.scanned == src.stats.kept == 230


def test_page_size_above_cap_follows_the_echoed_limit(sim):
    src = make_source(sim, page_size=500)
    sim.requests.clear()
    records = extract(src)
    assert len({r.invoice_id for r in records}) == 230
    assert src.stats.pages == 3 == sim.requests["/public/v1/billing/invoices"]  # 100 + 100 + 30, not 1 x 500


def test_small_pages_in_parallel_are_complete_and_in_order(sim):
    src = make_source(sim, page_size=7, concurrency=4)
    records = extract(src)
    assert len(records) == 230 and src.stats.pages == 33
    created = [sim.data.by_id[r.invoice_id].created for r in records]
    assert created == sorted(created)  # pages yielded in order despite parallel fetching


def test_window_end_is_inclusive_to_the_millisecond(sim):
    inv = next(i for i in sim.data.invoices if i.updated is None and i.style == 0)  # 7-digit fractions
    inv.created = inv.created.replace(microsecond=123456)  # sub-millisecond, as real tenants write
    sim.data.version += 1  # invalidate the simulator's cached index
    src = make_source(sim)
    got = [sim.data.by_id[r.invoice_id] for r in extract(src, inv.created, inv.created)]
    assert inv in got  # created exactly at the (sub-millisecond) bound: not lost to rounding
    # Everything else returned was modified since the start and created no later than the end.
    assert all(i.last_modified >= inv.created - timedelta(milliseconds=1) for i in got)
    assert all(i.created <= inv.created for i in got)
    assert len(got) < len(sim.data.invoices)


def test_incremental_after_mutation_including_first_time_update():
    with SIMULATOR_CLASS(size=120, knobs=Knobs(seed=5)) as s:
        t1 = datetime.now(UTC)
        assert len(extract(make_source(s), START, t1)) == 120
        never = {i.id for i in s.data.invoices if i.updated is None}
        lines_before = {i.id: len(i.lines) for i in s.data.invoices}
        time.sleep(0.01)
        touched = s.mutate(updates=4, new=3, voids=2, delete_lines=2, seed=9)
        assert touched["updated"][0] in never
        since = t1 - timedelta(minutes=10)  # the next run reads from cursor - lookback
        src = make_source(s)
        records = extract(src, since)
        want = {i for ids in touched.values() for i in ids}
        assert {r.invoice_id for r in records} == want
        by_id = {r.invoice_id: conformed.finalize(src.to_conformed(r.payload), derive_installment=True) for r in records}
        first = by_id[touched["updated"][0]]
        assert first.invoice["last_modified_at"] > first.invoice["created_at"]
        assert all(by_id[i].invoice["is_void"] for i in touched["voided"])
        assert all(len(by_id[i].lines) == lines_before[i] - 1 for i in touched["lines_deleted"])
        exp = s.expected(since)
        assert exp["invoices"] == len(records)
        assert sum(c.invoice["total_amount"] for c in by_id.values()) == exp["total_amount"]
        assert sum(c.invoice["tax_amount"] for c in by_id.values()) == exp["tax_amount"]


# -- omitted lines ---------------------------------------------------------------------------------
def test_omitted_lines_are_requested_again(sim):
    victim = sim.data.invoices[17]
    sim.omit_lines[victim.id] = 1
    src = make_source(sim)
    records = {r.invoice_id: r for r in extract(src)}
    assert sim.omit_lines[victim.id] == 0
    assert len(records[victim.id].payload["lines"]) == len(victim.lines) > 0
    assert "lines" not in records[victim.id].payload["$meta"]["omitted"]
    assert src.stats.extra["omitted_refetched"] == 1
    assert len(src.to_conformed(records[victim.id].payload).lines) == len(victim.lines)


def test_lines_omitted_for_good_fail_clearly(sim):
    victim = sim.data.invoices[5]
    sim.omit_lines[victim.id] = -1
    try:
        with pytest.raises(SourceError, match=f"{victim.id}.*omitted 'lines'"):
            extract(make_source(sim))
    finally:
        sim.omit_lines.pop(victim.id)


# -- auth and errors ---------------------------------------------------------------------------------
def test_bad_token_fails_after_one_renewal_without_leaking_it(sim):
    before = sim.unauthorized
    src = make_source(sim, api_token="idt:TKN-0000-0000:wrong-secret")
    with pytest.raises(SourceError) as err:
        extract(src)
    assert err.value.status == 401 and "authentication failed" in str(err.value)
    assert "GET /public/v1/billing/invoices" in str(err.value) and "wrong-secret" not in str(err.value)
    assert sim.unauthorized - before == 2  # the call, and its one repetition


def test_token_session_expiry_is_survived():
    with SIMULATOR_CLASS(size=60, knobs=Knobs(token_lifetime=0.1, latency=0.02)) as s:
        src = make_source(s, page_size=3, concurrency=2)
        records = extract(src)
        assert len({r.invoice_id for r in records}) == 60
        assert s.unauthorized >= 1


def test_permanently_expired_token_fails():
    with SIMULATOR_CLASS(size=5, knobs=Knobs(token_lifetime=0)) as s:
        with pytest.raises(SourceError, match="authentication failed"):
            extract(make_source(s))


def test_bad_rql_is_fatal_with_the_api_detail(sim):
    src = make_source(sim)
    with pytest.raises(SourceError) as err:
        src._get('and(ge(audit.created.at,"2024-01-01T00:00:00Z")', 0, 10)
    assert err.value.status == 400 and "Invalid RQL" in str(err.value)


def test_transient_faults_are_retried_to_the_exact_result():
    knobs = Knobs(seed=2, error_rate=0.2, rate_limit_rate=0.1, drop_rate=0.05, truncate_rate=0.1, retry_after=0)
    with SIMULATOR_CLASS(size=150, knobs=knobs) as s:
        src = make_source(s, fast_retries=True, page_size=20)
        records = extract(src)
        assert len({r.invoice_id for r in records}) == 150
        assert src.http.stats.retries > 0
        total = sum(src.to_conformed(r.payload).invoice["total_amount"] for r in records)
        assert total == s.expected()["total_amount"]


def test_unrecoverable_5xx_names_source_and_endpoint():
    with SIMULATOR_CLASS(size=5, knobs=Knobs(error_rate=1.0)) as s:
        src = make_source(s)
        src.http = HttpClient("swo", s.base_url, max_retries=2, backoff_initial=0.01, backoff_max=0.02)
        src.http.auth = make_source(s).http.auth
        with pytest.raises(SourceError, match=r"source 'swo' GET /public/v1/billing/invoices \(HTTP 5\d\d\)"):
            extract(src)


def test_identify_tolerates_timestamp_styles(sim):
    src = make_source(sim)
    for text, want in [
        ("2025-04-30T16:30:00.1234567+02:00", datetime(2025, 4, 30, 14, 30, 0, 123456, tzinfo=UTC)),
        ("2025-04-30T14:30:00.123Z", datetime(2025, 4, 30, 14, 30, 0, 123000, tzinfo=UTC)),
        ("2025-04-30T14:30:00Z", datetime(2025, 4, 30, 14, 30, tzinfo=UTC)),
    ]:
        rec = src.identify({"id": "INV-1", "audit": {"created": {"at": "2020-01-01T00:00:00Z"}, "updated": {"at": text}}})
        assert rec.invoice_id == "INV-1" and rec.last_modified_at == want
    rec = src.identify({"id": "INV-2", "audit": {"created": {"at": "2025-04-30T09:30:00.0000000-05:00"}}})
    assert rec.last_modified_at == datetime(2025, 4, 30, 14, 30, tzinfo=UTC)


def test_result_set_growing_while_paging_skips_nothing():
    """Invoices updated mid-run join the set at early (created-ordered) positions: later pages
    shift and the total grows; the client must follow the new total, never skip a record."""
    with SIMULATOR_CLASS(size=200, knobs=Knobs(seed=4)) as s:
        since = sorted(i.last_modified for i in s.data.invoices)[100]
        before = {i.id for i in s.data.invoices if i.last_modified >= since}
        src = make_source(s, page_size=10, concurrency=2)
        real_get, joined = src._get, []

        def get_then_mutate(rql, offset, limit, *select):
            body = real_get(rql, offset, limit, *select)
            if not joined:
                joined.extend(s.mutate(updates=30, seed=3)["updated"])
            return body

        src._get = get_then_mutate
        got = [r.invoice_id for r in extract(src, since)]
        assert len(got) == len(set(got))
        assert before <= set(got)
        assert set(joined) - before  # some invoices did join mid-run
