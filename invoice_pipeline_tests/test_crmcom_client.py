"""CRM.COM client against its simulator: paging, tokens, body statuses, time zones, end to end."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from invoice_pipeline import conformed
from invoice_pipeline.config import parse_config
from invoice_pipeline.errors import ConfigError, SourceError
from invoice_pipeline.http import HttpClient
from invoice_pipeline.simulation import Knobs
from invoice_pipeline.sources.base import SourceRecord, Window
from invoice_pipeline.sources.crmcom.client import CrmcomConfig, CrmcomSource
from invoice_pipeline.sources.crmcom.simulator import CrmcomSimulator

START = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def sim() -> Iterator[CrmcomSimulator]:
    with CrmcomSimulator(size=200, knobs=Knobs(retry_after=0, inconsistent_rate=0.05)) as server:
        yield server


def make_source(sim: CrmcomSimulator, fast_retries: bool = False, **overrides: Any) -> CrmcomSource:
    config = CrmcomConfig.model_validate({**sim.source_config(), **overrides})
    http = None
    if fast_retries:
        http = HttpClient("crm", sim.base_url, max_retries=5, backoff_initial=0.01, backoff_max=0.05)
    return CrmcomSource("crm", config, http)


def extract_all(source: CrmcomSource, start: datetime = START, end: datetime | None = None) -> list[SourceRecord]:
    window = Window(start, end or datetime.now(UTC))
    return [r for batch in source.extract(window) for r in batch]


def totals(source: CrmcomSource, records: list[SourceRecord]) -> dict[str, Any]:
    out: dict[str, Any] = {"invoices": 0, "lines": 0, "tax_lines": 0, "total_amount": Decimal(0),
                           "line_amount": Decimal(0), "tax_amount": Decimal(0)}
    for rec in records:
        c = conformed.finalize(source.to_conformed(rec.payload), derive_installment=True)
        out["invoices"] += 1
        out["lines"] += len(c.lines)
        out["tax_lines"] += len(c.tax_lines)
        out["total_amount"] += c.invoice["total_amount"]
        out["line_amount"] += c.invoice["net_amount"]
        out["tax_amount"] += c.invoice["tax_amount"]
        assert len(c.installments) == 1 and c.installments[0]["is_derived"]
    return out


def test_end_to_end_counts_and_exact_sums(sim: CrmcomSimulator) -> None:
    source = make_source(sim, concurrency=4)
    records = extract_all(source)
    assert len({r.invoice_id for r in records}) == len(records) == 200
    assert totals(source, records) == sim.expected()
    assert source.stats.extra["invoices_scanned"] == source.stats.extra["invoices_kept"] == 200
    assert source.stats.extra["accounts_receivable"] == len(sim.accounts)
    assert not sim.tokens  # released at the end


def test_pages_that_are_an_exact_multiple_of_the_page_size() -> None:
    # size 40 -> 6 accounts receivable (one without invoices), the key account holding exactly 10 invoices.
    with CrmcomSimulator(size=40, knobs=Knobs(retry_after=0)) as sim:
        assert len(sim.accounts) == 6 and len(sim._by_ar[0]) == 10
        source = make_source(sim, page_size=2, concurrency=2)
        records = extract_all(source)
        assert len(records) == 40
        # 6 accounts at 2 per page: 3 full pages, a 4th, empty one, asked once more (it follows a full
        # page, so it could be a glitch), then believed to be the end.
        assert source.stats.extra["account_pages"] == 5
        # Every page, then the empty one (a short page is never taken for the last), asked twice when it
        # follows a full page and once after a short one (or none).
        pages_per_ar = [-(-len(ids) // 2) + 1 + (len(ids) > 0 and len(ids) % 2 == 0) for ids in sim._by_ar.values()]
        assert source.stats.extra["invoice_pages"] == sum(pages_per_ar)
        assert totals(source, records) == sim.expected()


def test_page_size_above_the_cap_is_clamped() -> None:
    # The key account holds 525 invoices: asking 1000 would get 500 and mistake it for the last page.
    with CrmcomSimulator(size=2100, knobs=Knobs(retry_after=0)) as sim:
        source = make_source(sim, page_size=1000)
        assert source.page_size == 500
        records = extract_all(source)
        assert len(records) == 2100
        assert sum(1 for r in records if r.payload["accounts_receivable"]["id"] == sim.accounts[0]["id"]) == 525


def test_token_expiring_mid_run_is_obtained_again(sim: CrmcomSimulator) -> None:
    # ~30 calls of >= 50 ms on 2 workers against a 0.3 s token life: several expiries mid-run, and a fresh
    # token outlives one call even on a loaded machine.
    with CrmcomSimulator(size=60, knobs=Knobs(retry_after=0, token_lifetime=0.3, latency=0.05)) as short:
        source = make_source(short, concurrency=2, page_size=3)
        records = extract_all(source)
        assert len(records) == 60
        assert short.logins >= 2 and source.auth.logins == short.logins
        assert totals(source, records) == short.expected()


def test_token_renewed_before_its_lifetime_ends(sim: CrmcomSimulator) -> None:
    source = make_source(sim, concurrency=1)
    source.auth.RENEW_AT = 0.0  # every request finds the token due for renewal (its 2 hours are not over)
    logins_before, released_before = sim.logins, len(sim.released)
    assert len(extract_all(source)) == 200
    logins = sim.logins - logins_before
    assert logins > 5
    assert len(sim.released) - released_before == logins  # retired tokens are released too
    assert not sim.tokens


def test_token_rejected_twice_fails_clearly(sim: CrmcomSimulator) -> None:
    with CrmcomSimulator(size=10, knobs=Knobs(token_lifetime=1e-9)) as dead:
        source = make_source(dead)
        with pytest.raises(SourceError, match=r"GET /accounts_receivable/list \(HTTP 401\): authentication failed") as exc:
            extract_all(source)
        assert dead.logins == 2
        assert "token=" not in str(exc.value)


def test_error_status_on_http_200_fails_naming_endpoint_and_account(sim: CrmcomSimulator) -> None:
    sim.inject("/invoices/list", "GENERAL_ERROR", "Database unavailable")
    source = make_source(sim, concurrency=1)
    with pytest.raises(SourceError) as exc:
        extract_all(source)
    message = str(exc.value)
    assert "GET /invoices/list" in message and "GENERAL_ERROR: Database unavailable" in message
    assert f"accounts receivable {sim.accounts[0]['id']}" in message
    assert not sim.tokens  # released although the run failed


def test_bad_credentials_are_reported(sim: CrmcomSimulator) -> None:
    source = make_source(sim, password="wrong")
    with pytest.raises(SourceError, match="AUTHENTICATION_FAILED") as exc:
        extract_all(source)
    assert "POST /authentication/token" in str(exc.value) and "wrong" not in str(exc.value)


def test_transient_errors_are_retried(sim: CrmcomSimulator) -> None:
    with CrmcomSimulator(size=120, knobs=Knobs(retry_after=0, error_rate=0.15, rate_limit_rate=0.1, truncate_rate=0.05)) as flaky:
        source = make_source(flaky, fast_retries=True)
        records = extract_all(source)
        assert source.http.stats.retries > 0
        assert totals(source, records) == flaky.expected()


def test_naive_timestamps_are_read_in_the_configured_zone(sim: CrmcomSimulator) -> None:
    inv = max(sim.invoices, key=lambda i: i.updated)
    local = inv.updated.astimezone(sim.tz).replace(tzinfo=None)
    record = make_source(sim).identify({"id": "x", "log_information": {"updated_date": local.isoformat()}})
    assert record.last_modified_at == inv.updated
    as_utc = make_source(sim, timezone="UTC").identify({"id": "x", "log_information": {"updated_date": local.isoformat()}})
    assert as_utc.last_modified_at == local.replace(tzinfo=UTC) != inv.updated  # Nicosia is 2-3 hours ahead
    # The window bound is inclusive, in UTC: the newest invoice is kept at its exact instant only.
    source = make_source(sim)
    kept = extract_all(source, start=inv.updated, end=inv.updated)
    assert [r.invoice_id for r in kept] == [inv.id]
    assert extract_all(make_source(sim), start=inv.updated + timedelta(seconds=1)) == []
    assert source.stats.extra["invoices_scanned"] == 200 and source.stats.extra["invoices_kept"] == 1
    assert source.stats.extra["invoices_outside_window"] == 199


def test_incremental_run_after_mutation() -> None:
    with CrmcomSimulator(size=150, knobs=Knobs(retry_after=0)) as sim:
        first_end = datetime.now(UTC)
        first = extract_all(make_source(sim), end=first_end)
        assert len(first) == 150
        before = {r.invoice_id: len(r.payload["invoice_item_set"]) for r in first}
        touched = sim.mutate(updates=4, new=3, voids=2, delete_lines=2, seed=7)
        since = first_end - timedelta(minutes=10)  # cursor minus lookback
        source = make_source(sim)
        second = extract_all(source, start=since)
        ids = {r.invoice_id for r in second}
        assert ids == {i for kind in touched.values() for i in kind}
        assert source.stats.extra["invoices_scanned"] == 153 and source.stats.extra["invoices_kept"] == 11
        assert totals(source, second) == sim.expected(since=since)
        by_id = {r.invoice_id: source.to_conformed(r.payload) for r in second}
        for inv_id in touched["lines_deleted"]:
            assert len(by_id[inv_id].lines) == before[inv_id] - 1
        assert all(by_id[i].invoice["is_void"] for i in touched["voided"])


def test_config_validates_timezone_and_currency(sim: CrmcomSimulator) -> None:
    block = sim.source_config()
    assert parse_config({"sources": {"crm": block}}).sources["crm"].timezone == "Europe/Nicosia"
    with pytest.raises(ConfigError, match=r"sources\.crm\.timezone.*not a known IANA time zone"):
        parse_config({"sources": {"crm": {**block, "timezone": "Mars/Olympus"}}})
    with pytest.raises(ConfigError, match=r"sources\.crm\.currency"):
        parse_config({"sources": {"crm": {**block, "currency": "euro"}}})
    with pytest.raises(ConfigError, match=r"sources\.crm\.organisation"):
        parse_config({"sources": {"crm": {k: v for k, v in block.items() if k != "organisation"}}})
    minimal = {k: v for k, v in block.items() if k not in ("timezone", "currency")}
    cfg = parse_config({"sources": {"crm": minimal}}).sources["crm"]
    assert (cfg.timezone, cfg.currency) == ("UTC", "USD")
    assert "sim_password" not in repr(cfg)
