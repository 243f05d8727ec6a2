"""The Oracle OCC client against its simulator: paging, auth expiry, retries, truncation, totals."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from invoice_pipeline import conformed
from invoice_pipeline.errors import SourceError
from invoice_pipeline.http import HttpClient
from invoice_pipeline.simulation import Knobs, SimRequest, SimResponse
from invoice_pipeline.sources.base import ExtractStats, Window
from invoice_pipeline.sources.oracle_occ.client import OracleOccConfig, OracleOccSource
from invoice_pipeline.sources.oracle_occ.simulator import SIMULATOR_CLASS

LOGIN = "/ccstore/v1/login"
REFRESH = "/ccstore/v1/refresh"
LIST = "/ccstore/v1/selfservice/invoices"


def make_source(sim, max_retries: int = 5, **overrides: Any) -> OracleOccSource:
    config = OracleOccConfig.model_validate({**sim.source_config(), **overrides})
    http = HttpClient(
        "oracle_test", config.base_url, max_retries=max_retries, backoff_initial=0.01, backoff_max=0.05,
        pool_size=config.concurrency, secrets=config.secrets(),
    )
    return OracleOccSource("oracle_test", config, http)


def extract(source: OracleOccSource, since: datetime | None = None) -> dict[str, dict]:
    """Every payload the client yields, newest version per invoice id."""
    start = since or source.config.start_date
    out: dict[str, dict] = {}
    for batch in source.extract(Window(start, datetime.now(UTC))):
        for record in batch:
            assert record.invoice_id == record.payload["CustomerTransactionId"]
            out[record.invoice_id] = record.payload
    return out


def totals(source: OracleOccSource, payloads: dict[str, dict]) -> dict[str, Any]:
    """Map and finalize like the pipeline does, then sum like sim.expected()."""
    out: dict[str, Any] = dict.fromkeys(("invoices", "lines", "tax_lines", "installments", "truncated", "void"), 0)
    out.update(dict.fromkeys(("total_amount", "line_amount", "tax_amount", "balance_due"), Decimal(0)))
    for payload in payloads.values():
        c = conformed.finalize(source.to_conformed(payload), derive_installment=False)
        inv = c.invoice
        out["invoices"] += 1
        out["lines"] += len(c.lines)
        out["tax_lines"] += len(c.tax_lines)
        out["installments"] += len(c.installments)
        out["truncated"] += inv["is_truncated"]
        out["void"] += inv["is_void"]
        out["total_amount"] += inv["total_amount"]
        out["line_amount"] += inv["net_amount"]
        out["tax_amount"] += inv["tax_amount"]
        out["balance_due"] += inv["balance_due"]
    return out


def test_end_to_end_totals_equal_the_simulators_truth():
    with SIMULATOR_CLASS(size=260, knobs=Knobs(seed=3)) as sim, make_source(sim) as source:
        payloads = extract(source)
        expected = sim.expected()
        assert totals(source, payloads) == expected
        assert expected["truncated"] >= 2 and expected["void"] >= 1
        assert source.stats.pages == sim.requests[LIST] - 1 == math.ceil(260 / 25)  # and one probe of q
        assert source.stats.scanned == source.stats.kept == 260
        assert sim.requests[LOGIN] == 1 and sim.auth_failures == 0


def test_truncated_invoices_are_flagged_and_keep_what_came():
    with SIMULATOR_CLASS(size=200) as sim, make_source(sim) as source:
        payloads = extract(source)
        flagged = []
        for payload in payloads.values():
            c = conformed.finalize(source.to_conformed(payload), derive_installment=False)
            more = payload["receivablesInvoiceLines"]["hasMore"]
            assert c.invoice["is_truncated"] is more
            if more:
                flagged.append(c)
                assert len(c.lines) == 25
                assert c.invoice["net_amount"] + c.invoice["tax_amount"] < c.invoice["total_amount"]
            else:
                assert (c.invoice["net_amount"] + c.invoice["tax_amount"] + c.invoice["freight_amount"]
                        == c.invoice["total_amount"])
            # installments are real Oracle objects (not derived) and add up to the header total
            assert c.installments and not any(i["is_derived"] for i in c.installments)
            assert sum(i["original_amount"] for i in c.installments) == c.invoice["total_amount"]
        assert len(flagged) == sim.expected()["truncated"] == 2


def test_page_size_above_the_cap_still_reads_every_invoice():
    with SIMULATOR_CLASS(size=130) as sim, make_source(sim, page_size=100) as source:
        assert len(extract(source)) == 130
        assert sim.requests[LIST] == math.ceil(130 / 25) + 1  # the API answered 25 per page (+ the q probe)


def test_incremental_window_reads_changes_since_its_start():
    with SIMULATOR_CLASS(size=200) as sim, make_source(sim) as source:
        since = datetime(2025, 3, 1, tzinfo=UTC)
        payloads = extract(source, since)
        assert totals(source, payloads) == sim.expected(since)
        assert all(p["LastUpdateDate"] >= "2025-03-01" for p in payloads.values())


def test_next_run_sees_updates_new_voids_and_deleted_lines():
    with SIMULATOR_CLASS(size=150) as sim, make_source(sim) as source:
        first = extract(source)
        cursor = datetime.now(UTC).replace(microsecond=0)
        touched = sim.mutate(updates=3, new=2, voids=2, delete_lines=2, seed=9)
        second = extract(source, cursor)
        changed = {i for kind in ("updated", "new", "voided", "lines_deleted") for i in touched[kind]}
        assert set(second) == changed
        assert totals(source, second) == sim.expected(cursor)
        for invoice_id in touched["voided"]:
            assert source.to_conformed(second[invoice_id]).invoice["is_void"] is True
        for invoice_id in touched["lines_deleted"]:
            before = len(source.to_conformed(first[invoice_id]).lines)
            assert len(source.to_conformed(second[invoice_id]).lines) == min(before - 1, 25)


def test_token_expiring_mid_run_is_refreshed_or_renewed():
    # 1 s tokens and 50 ms per request over ~100 requests on 2 workers: several lifetimes pass.
    with SIMULATOR_CLASS(size=90, knobs=Knobs(token_lifetime=1, latency=0.05)) as sim:
        with make_source(sim, concurrency=2) as source:
            payloads = extract(source)
            assert totals(source, payloads) == sim.expected()
        assert sim.requests[LOGIN] + sim.requests[REFRESH] >= 3


def test_a_401_mid_run_logs_in_again_once():
    with SIMULATOR_CLASS(size=60) as sim, make_source(sim) as source:
        assert len(extract(source)) == 60
        sim.revoke_tokens()  # the server forgets the token the client still believes valid
        assert len(extract(source)) == 60
        assert sim.auth_failures >= 1 and sim.requests[LOGIN] == 2


def test_bad_credentials_fail_with_a_clear_error_without_the_password():
    with SIMULATOR_CLASS(size=5) as sim, make_source(sim, password="not-the-password") as source:
        with pytest.raises(SourceError) as err:
            extract(source)
        assert err.value.status == 401 and "oracle_test" in str(err.value)
        assert LOGIN in str(err.value) and "not-the-password" not in str(err.value)
        assert sim.requests[LOGIN] == 1  # a rejected password is not retried


def test_5xx_429_drops_and_cut_bodies_are_retried():
    knobs = Knobs(error_rate=0.12, rate_limit_rate=0.08, retry_after=0, drop_rate=0.03, truncate_rate=0.03, seed=5)
    with SIMULATOR_CLASS(size=120, knobs=knobs) as sim, make_source(sim, max_retries=10) as source:
        payloads = extract(source)
        assert totals(source, payloads) == sim.expected()
        assert source.http.stats.retries >= 10


def test_a_source_that_keeps_failing_stops_the_run_with_the_endpoint_and_status():
    with SIMULATOR_CLASS(size=5, knobs=Knobs(error_rate=1.0)) as sim, make_source(sim, max_retries=2) as source:
        with pytest.raises(SourceError) as err:
            extract(source)
        assert err.value.status in (500, 502, 503, 504)
        assert "gave up after 3 attempts" in str(err.value) and f"POST {LOGIN}" in str(err.value)
        assert sim.requests[LOGIN] == 3


class _VanishingSim(SIMULATOR_CLASS):
    """Answers 404 for one invoice's detail, as if it were deleted between list and detail calls."""

    gone: str = ""

    def handle(self, request: SimRequest) -> SimResponse:
        if self.gone and request.path == f"{LIST}/{self.gone}":
            return SimResponse(404, {"errorCode": "00001404", "message": "No invoice found.", "status": "404"})
        return super().handle(request)


def test_an_invoice_deleted_between_list_and_detail_is_skipped():
    with _VanishingSim(size=40) as sim, make_source(sim) as source:
        sim.gone = sim.invoice_ids()[0]
        payloads = extract(source)
        assert len(payloads) == 39 and sim.gone not in payloads
        assert source.stats.extra["vanished"] == 1


def test_start_date_excludes_older_invoices():
    with SIMULATOR_CLASS(size=100) as sim, make_source(sim, start_date="2025-01-01T00:00:00Z") as source:
        payloads = extract(source)
        assert len(payloads) == sim.expected(datetime(2025, 1, 1, tzinfo=UTC))["invoices"] < 100
        assert min(p["LastUpdateDate"] for p in payloads.values()) >= "2025-01-01"
        assert sim.expected(datetime(2025, 1, 1, tzinfo=UTC) - timedelta(days=1))["invoices"] >= len(payloads)


class _ChangingSim(SIMULATOR_CLASS):
    """Updates and adds invoices right after the client has read its third list request (probe + 2 pages)."""

    def handle(self, request: SimRequest) -> SimResponse:
        response = super().handle(request)
        if request.path == LIST and self.requests[LIST] == 3 and response.status == 200:
            time.sleep(1.1)  # the changes are stamped after the window's (second-precision) end
            self.changed = self.mutate(updates=15, new=5, seed=4)
            self.changed_at = self._detail(self._invoices[int(self.changed["new"][0])])["LastUpdateDate"]
        return response


def test_invoices_changing_mid_run_never_make_the_client_skip_one():
    # The window's list is bounded by its frozen end: invoices updated mid-run leave it, shifting
    # later ones back past the client's offset. totalResults falls; the client must step back and
    # re-read (de-duplicating), never skip one that is still inside the window.
    with _ChangingSim(size=300) as sim, make_source(sim) as source:
        since = datetime(2025, 1, 1, tzinfo=UTC)
        sim.requests[LIST] = -100  # no change during this first, reference run
        matching = {i for i, p in extract(source).items() if p["LastUpdateDate"] >= "2025-01-01"}
        sim.requests[LIST] = 0
        source.stats = ExtractStats()
        payloads = extract(source, since)
        left = set(sim.changed["updated"])  # updated after the window's end: no longer inside it
        assert matching - left <= set(payloads)
        # Only versions inside the window: an id read before its change comes in its old version.
        assert all(p["LastUpdateDate"] < sim.changed_at for p in payloads.values())
        assert not set(sim.changed["new"]) & set(payloads)
        assert source.stats.extra["list_step_backs"] >= 1
