"""Agvance client against its simulator: windows, splitting, edges, sessions, body-level errors."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from invoice_pipeline import conformed
from invoice_pipeline.config import ConfigError, parse_config
from invoice_pipeline.errors import SourceError
from invoice_pipeline.http import HttpClient
from invoice_pipeline.simulation import Knobs
from invoice_pipeline.sources.agvance.client import AgvanceConfig, AgvanceSource
from invoice_pipeline.sources.agvance.simulator import API_KEY, SIMULATOR_CLASS
from invoice_pipeline.sources.base import SourceRecord, Window

START = datetime(2024, 1, 1, tzinfo=UTC)


def make_source(sim: Any, cls: type[AgvanceSource] = AgvanceSource, **overrides: Any) -> AgvanceSource:
    cfg = AgvanceConfig.model_validate({**sim.source_config(), **overrides})
    http = HttpClient("agv", sim.base_url, max_retries=5, backoff_initial=0.01, backoff_max=0.05, secrets=cfg.secrets())
    return cls("agv", cfg, http=http)


def extract(src: AgvanceSource, start: datetime = START, end: datetime | None = None) -> list[SourceRecord]:
    return [r for batch in src.extract(Window(start, end or datetime.now(UTC))) for r in batch]


def totals(src: AgvanceSource, records: list[SourceRecord]) -> dict[str, Any]:
    out: dict[str, Any] = {"invoices": 0, "lines": 0, "tax_lines": 0, "total_amount": Decimal(0),
                           "line_amount": Decimal(0), "tax_amount": Decimal(0)}
    for rec in records:
        c = conformed.finalize(src.to_conformed(rec.payload), derive_installment=True)
        assert len(c.installments) == 1 and c.installments[0]["is_derived"]
        out["invoices"] += 1
        out["lines"] += len(c.lines)
        out["tax_lines"] += len(c.tax_lines)
        out["total_amount"] += c.invoice["total_amount"]
        out["line_amount"] += c.invoice["net_amount"]
        out["tax_amount"] += c.invoice["tax_amount"]
    return out


@pytest.fixture(scope="module")
def sim():
    with SIMULATOR_CLASS(size=300, knobs=Knobs(retry_after=0), max_results=40) as s:
        yield s


def test_config_keys_defaults_and_validation():
    raw = {"type": "agvance", "base_url": "http://x.test/", "api_key": "key-S3CRET", "username": "u",
           "password": "pw-S3CRET", "database_id": 12345, "start_date": "2024-01-01T00:00:00Z"}
    cfg = AgvanceConfig.model_validate(raw)
    assert cfg.database_id == "12345" and cfg.currency == "USD" and cfg.window_size == timedelta(days=7)
    assert set(cfg.secrets()) == {"key-S3CRET", "pw-S3CRET"} and "S3CRET" not in repr(cfg)
    assert AgvanceConfig.model_validate({**raw, "window_size": "36h"}).window_size == timedelta(hours=36)
    with pytest.raises(ConfigError, match="window_size"):
        parse_config({"sources": {"agv": {**raw, "window_size": "500ms"}}})
    with pytest.raises(ConfigError, match="sources.agv.apikey"):
        parse_config({"sources": {"agv": {**raw, "apikey": "x"}}})


def test_windows_tile_the_range_without_gap_or_overlap(sim):
    a, b = datetime(2024, 3, 1, 0, 0, 7, tzinfo=UTC), datetime(2024, 3, 2, 5, 0, 0, tzinfo=UTC)
    windows = list(make_source(sim, window_size="90m")._windows(a, b))
    assert windows[0][0] == a and windows[-1][1] == b and len(windows) == 20
    assert all(hi >= lo for lo, hi in windows)
    assert all(nxt[0] - prev[1] == timedelta(seconds=1) for prev, nxt in zip(windows, windows[1:]))
    assert list(make_source(sim, window_size="100000d")._windows(a, b)) == [(a, b)]


def test_end_to_end_counts_and_exact_sums(sim):
    src = make_source(sim, window_size="30d")
    records = extract(src)
    ids = [r.invoice_id for r in records]
    assert len(ids) == len(set(ids)) == sim.size
    assert totals(src, records) == sim.expected()
    # Invoice numbers repeat across locations; the key keeps them apart.
    numbers = Counter(r.payload["InvoiceNumber"] for r in records)
    assert max(numbers.values()) > 1
    assert src.stats.scanned == src.stats.kept == sim.size and src.stats.pages > 1


def test_too_large_windows_are_split(sim):
    before = sim.requests["/api/Invoice/GetInvoicesList"]
    src = make_source(sim, window_size="5000d", concurrency=1)
    records = extract(src)
    assert len({r.invoice_id for r in records}) == sim.size
    assert src.stats.extra["window_splits"] > 0
    # One window for everything, refused, then halved until each part fits.
    assert sim.requests["/api/Invoice/GetInvoicesList"] - before == 2 * src.stats.extra["window_splits"] + 1


def test_single_second_too_large_is_a_clear_error():
    with SIMULATOR_CLASS(size=300, knobs=Knobs(retry_after=0), max_results=4) as small:
        biggest, n = Counter(i.modified for i in small.invoices.values()).most_common(1)[0]
        assert n > 4
        src = make_source(small, window_size="1d")
        with pytest.raises(SourceError, match="single second") as err:
            extract(src, biggest - timedelta(hours=1), biggest + timedelta(hours=1))
        assert biggest.strftime("%Y-%m-%dT%H:%M:%S") in str(err.value)


def test_records_on_window_edges_come_once_and_none_is_missed(sim):
    # Start on one bulk second and let the next window begin exactly on another one.
    seconds = sorted(t for t, n in Counter(i.modified for i in sim.invoices.values()).items() if n > 1)
    t0, t1 = seconds[0], seconds[1]
    src = make_source(sim, window_size=f"{int((t1 - t0).total_seconds())}s")
    records = extract(src, t0, t1 + timedelta(microseconds=999_999))
    got = Counter(r.invoice_id for r in records)
    want = {i.key for i in sim.invoices.values() if t0 <= i.modified <= t1}
    assert set(got) == want and set(got.values()) == {1}
    assert src.stats.scanned == len(want) and src.stats.extra["duplicates"] == 0
    on_edges = {i.key for i in sim.invoices.values() if i.modified in (t0, t1)}
    assert len(on_edges) > 2 and on_edges <= set(got)


def test_overlapping_windows_are_deduplicated(sim):
    class Overlapping(AgvanceSource):
        def _windows(self, start, end):  # each window re-reads the previous day, like a lookback
            for lo, hi in super()._windows(start, end):
                yield max(lo - timedelta(days=1), start), hi

    src = make_source(sim, cls=Overlapping, window_size="3d")
    got = Counter(r.invoice_id for r in extract(src))
    assert set(got) == set(sim.invoices) and set(got.values()) == {1}
    assert src.stats.scanned > src.stats.kept == sim.size
    assert src.stats.extra["duplicates"] == src.stats.scanned - sim.size


def test_a_newer_version_in_a_later_window_is_kept(sim):
    key, inv = next(iter(sim.invoices.items()))
    older = inv.payload()
    newer = {**older, "InvoiceRecordHeaderDetails": {**older["InvoiceRecordHeaderDetails"],
                                                      "LastModifiedUtc": "2030-01-01T00:00:00"}}

    class Replaying(AgvanceSource):
        def _fetch(self, start, end):
            return [older, older, newer, older]

    src = make_source(sim, cls=Replaying)
    records = extract(src, START, START + timedelta(days=1))
    assert [r.last_modified_at.year for r in records] == [inv.modified.year, 2030]
    assert src.stats.extra["duplicates"] == 2


def test_incremental_after_mutation():
    with SIMULATOR_CLASS(size=150, knobs=Knobs(retry_after=0, seed=7)) as s:
        assert len(extract(make_source(s))) == 150
        before = {k: len(i.lines) for k, i in s.invoices.items()}
        touched = s.mutate(updates=5, new=3, voids=2, delete_lines=2, seed=3)
        since = max(i.modified for i in s.invoices.values())
        src = make_source(s)
        records = extract(src, since)
        got = {r.invoice_id: r for r in records}
        assert set(got) == {k for ids in touched.values() for k in ids}
        assert totals(src, records) == s.expected(since)
        for key in touched["voided"]:
            assert src.to_conformed(got[key].payload).invoice["status"] == "Void"
        for key in touched["lines_deleted"]:
            assert len(src.to_conformed(got[key].payload).lines) == before[key] - 1
        assert {r.last_modified_at for r in records} == {since}


def test_session_expiry_logs_in_again_once():
    with SIMULATOR_CLASS(size=120, knobs=Knobs(retry_after=0, token_lifetime=0.3)) as s:
        src = make_source(s, window_size="30d", concurrency=4)
        assert len(extract(src)) == 120
        time.sleep(0.4)  # the session expires while idle
        assert len(extract(src)) == 120
        assert s.logins == 2 and src.auth.logins == 2


def test_session_that_never_lives_fails_after_one_relogin():
    with SIMULATOR_CLASS(size=20, knobs=Knobs(retry_after=0, token_lifetime=0)) as s:
        src = make_source(s, window_size="5000d", concurrency=1)
        with pytest.raises(SourceError, match="authentication failed") as err:
            extract(src)
        assert s.logins == 2 and err.value.status == 401
        assert src.auth._session not in str(err.value)


def test_bad_api_key_and_bad_password(sim):
    with pytest.raises(SourceError, match="Invalid ApiKey") as err:
        extract(make_source(sim, api_key="wrong-key-123"))
    assert err.value.status == 401 and "wrong-key-123" not in str(err.value)
    with pytest.raises(SourceError, match="login failed: Invalid UserName") as err:
        extract(make_source(sim, password="nope"))
    assert err.value.status == 200 and API_KEY not in str(err.value)


def test_status_error_on_http_200_is_fatal_and_redacted(sim):
    src = make_source(sim)
    sim.fail_next.append("Database 12345 is offline for maintenance (ref {session} key " + API_KEY + ")")
    try:
        with pytest.raises(SourceError, match="Database 12345 is offline") as err:
            extract(src)
    finally:
        sim.fail_next.clear()
    message = str(err.value)
    assert "GetInvoicesList" in message and "***" in message
    assert src.auth._session and src.auth._session not in message and API_KEY not in message


def test_count_must_match_records(sim):
    sim.count_offset = 1
    try:
        with pytest.raises(SourceError, match="Count says"):
            extract(make_source(sim, window_size="30d"))
    finally:
        sim.count_offset = 0


def test_survives_faults_and_matches_expected():
    knobs = Knobs(retry_after=0, error_rate=0.1, rate_limit_rate=0.05, drop_rate=0.03, truncate_rate=0.05, seed=5)
    with SIMULATOR_CLASS(size=200, knobs=knobs, max_results=60) as s:
        # One worker: the simulator's fault sequence is then the same on every run.
        src = make_source(s, window_size="20d", concurrency=1)
        records = extract(src)
        assert totals(src, records) == s.expected()
        assert src.http.stats.retries > 0


def test_identify_and_unmappable_payload_travels_on(sim):
    src = make_source(sim)
    payload = next(iter(sim.invoices.values())).payload()
    rec = src.identify(payload)
    assert rec.invoice_id == f"{payload['InvoiceLocation']}-{payload['InvoiceNumber']}"
    assert rec.last_modified_at.tzinfo is not None
    broken = {**payload, "InvoiceRecordHeaderDetails": None}
    assert src.record_or_raw(broken).last_modified_at is None
