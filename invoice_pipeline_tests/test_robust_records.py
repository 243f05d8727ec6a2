"""Issue 19, probing from outside: the real Agvance client against its simulator with one response
tampered on the way out (numbers a float cannot hold, a record nested 300 levels deep, a lone
surrogate), and a wide object against the warehouse's column handling. Nothing lost, nothing hangs.
"""

from __future__ import annotations

import logging
import re
import threading
from decimal import Decimal
from pathlib import Path
from typing import Callable

import orjson
import psutil
import pytest

from invoice_pipeline.pipeline import run_source
from invoice_pipeline.simulation import SimRequest, SimResponse
from invoice_pipeline.sources.agvance.simulator import AgvanceSimulator
from invoice_pipeline.warehouse import Warehouse

from .conftest import make_app
from .fake_source import FakeSource, fake_config_block, invoice

Tamper = Callable[[int, bytes], bytes]  # (index of the record in the run, its opening bytes) -> replacement


class TamperedAgvance(AgvanceSimulator):
    """Rewrites the opening of chosen invoice records in the list responses, as raw bytes."""

    def __init__(self, tamper: Tamper, **kw):
        super().__init__(**kw)
        self.tamper = tamper
        self.seen = 0

    def handle(self, request: SimRequest) -> SimResponse:
        resp = super().handle(request)
        if resp.status == 200 and isinstance(resp.body, bytes) and b'"InvoiceRecords"' in resp.body:
            def one(match: re.Match) -> bytes:
                self.seen += 1
                return self.tamper(self.seen - 1, match.group())
            resp = SimResponse(resp.status, re.sub(rb'\{"InvoiceDate":', one, resp.body), resp.headers)
        return resp


def _run(tmp_path: Path, tamper: Tamper, **overrides):
    with TamperedAgvance(tamper, size=24) as sim:
        app = make_app(tmp_path, {"agv": sim.source_config()}, **overrides)
        wh = Warehouse(app.warehouse)
        summary = run_source(app, "agv", warehouse=wh)
    return app, wh, summary


def test_numbers_are_stored_exactly_as_sent(tmp_path: Path) -> None:
    """`1234567890123.4567` was stored as ...4568 and a 30-digit integer as 1.2345678901234568e+29."""
    def tamper(i: int, opening: bytes) -> bytes:
        if i != 3:
            return opening
        return b'{"BigRef":123456789012345678901234567890,"Exact":1234567890123.4567,"Plain":12.50,"InvoiceDate":'

    app, wh, summary = _run(tmp_path, tamper)
    assert summary.quarantined == 0 and summary.invoices_loaded == 24
    with wh.reader() as con:
        flat = con.execute('select _invoice_id, "BigRef", "Exact", "Plain" from agv.invoices where "BigRef" is not null').fetchall()
        assert len(flat) == 1
        invoice_id, big, exact, plain = flat[0]
        assert (big, exact, plain) == ("123456789012345678901234567890", "1234567890123.4567", "12.50")
        raw = con.execute("select payload from agv._raw_invoices where invoice_id = ?", [invoice_id]).fetchone()[0]
        assert '"BigRef":123456789012345678901234567890' in raw and '"Exact":1234567890123.4567' in raw
        assert invoice_id.endswith(orjson.loads(raw)["InvoiceNumber"])


def test_an_amount_too_precise_for_a_float_reaches_the_money_column_exactly(tmp_path: Path) -> None:
    def tamper(i: int, opening: bytes) -> bytes:
        return opening if i != 5 else b'{"Marker":"x","InvoiceDate":'

    def exact_total(body: bytes) -> bytes:  # the marked record's InvoiceTotal, as a 17-digit token
        return re.sub(rb'("Marker":"x".*?"InvoiceTotal":)[0-9.]+', rb"\g<1>1234567890123.4567", body, count=1)

    class Exact(TamperedAgvance):
        def handle(self, request: SimRequest) -> SimResponse:
            resp = super().handle(request)
            return SimResponse(resp.status, exact_total(resp.body), resp.headers) if isinstance(resp.body, bytes) else resp

    with Exact(tamper, size=12) as sim:
        app = make_app(tmp_path, {"agv": sim.source_config()})
        wh = Warehouse(app.warehouse)
        run_source(app, "agv", warehouse=wh)
    with wh.reader() as con:
        totals = con.execute(
            "select i.total_amount from main.invoices i join agv.invoices f on f._invoice_id = i.invoice_id "
            "where f.\"Marker\" = 'x'").fetchall()
    assert totals == [(Decimal("1234567890123.4567"),)]


@pytest.mark.parametrize("processes", [0, 2])
def test_unusual_records_are_quarantined_and_the_rest_loads(tmp_path: Path, processes: int) -> None:
    """Nesting deeper than orjson writes (254) and a lone surrogate used to fail the whole source."""
    deep = b"[" * 300 + b"1" + b"]" * 300

    def tamper(i: int, opening: bytes) -> bytes:
        if i == 2:
            return b'{"Deep":' + deep + b',"InvoiceDate":'
        if i == 13:
            return b'{"Note":"caf\\ud800","InvoiceDate":'
        return opening

    app, wh, summary = _run(tmp_path, tamper, batch_size=5, prepare_processes=processes)
    assert summary.status == "success" and summary.quarantined == 2 and summary.invoices_loaded == 22
    with wh.reader() as con:
        rows = con.execute("select invoice_id, reason, payload from agv._quarantine order by reason").fetchall()
        loaded = con.execute("select count(*) from main.invoices where source_name = 'agv'").fetchone()[0]
    assert loaded == 22
    (sur_id, sur_reason, sur_payload), (deep_id, deep_reason, deep_payload) = rows  # "holds" < "is nested"
    assert deep_id and "nested deeper than 254 levels" in deep_reason and '"Deep": [[[' in deep_payload
    assert sur_id and "lone UTF-16 surrogate" in sur_reason and "caf\\ud800" in sur_payload
    assert deep_id != sur_id


class PeakRss:
    """The highest RSS seen (sampled every 5 ms) above the RSS at entry."""

    def __enter__(self) -> PeakRss:
        self.proc = psutil.Process()
        self.before = self.peak = self.proc.memory_info().rss
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(0.005):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def grown(self) -> int:
        return self.peak - self.before


def test_a_wide_object_keeps_memory_flat_and_overflows_into_json(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One object with 1,500 new keys took 850 MB (one ALTER per column in the batch's transaction)."""
    app = make_app(tmp_path, {"wide": fake_config_block()}, prepare_processes=0)
    wh = Warehouse(app.warehouse)
    wh.max_columns_per_table = 1800
    # a first, narrow load: the table exists, so the wide one adds its columns by ALTER
    run_source(app, "wide", warehouse=wh, source=FakeSource("wide", app.sources["wide"], [invoice(1)]))
    wide = invoice(2, updated="2025-02-01T00:00:00Z", **{f"k{i:04d}": f"v{i}" for i in range(2500)})
    with caplog.at_level(logging.WARNING, logger="invoice_pipeline.warehouse"), PeakRss() as peak:
        summary = run_source(app, "wide", warehouse=wh, source=FakeSource("wide", app.sources["wide"], [wide]))
    grown = peak.grown / 2**20
    assert summary.invoices_loaded == 1
    assert grown < 250, f"RSS grew {grown:.0f} MB"
    with wh.reader() as con:
        cols = [r[0] for r in con.execute("select column_name from information_schema.columns "
                                          "where table_schema = 'wide' and table_name = 'invoices'").fetchall()]
        k_cols = [c for c in cols if c.startswith("k")]
        overflow = con.execute("select _overflow from wide.invoices where _invoice_id = '2'").fetchone()[0]
    assert len(k_cols) + 3 == 1800 and "_overflow" in cols  # id, updated, total, and the k columns: the cap
    kept = orjson.loads(overflow)
    assert len(kept) == 2500 - len(k_cols) and set(kept) | set(k_cols) == {f"k{i:04d}" for i in range(2500)}
    assert kept["k2499"] == "v2499"
    assert any("source 'wide': table invoices has reached its cap of 1800 columns" in r.getMessage() for r in caplog.records)


def test_an_html_page_with_status_200_fails_the_run_naming_source_and_url(tmp_path: Path) -> None:
    """A proxy's or login page answered with 200 instead of a list page: a clear error, no cursor moved."""
    from invoice_pipeline.sources.oracle_occ.simulator import SIMULATOR_CLASS as OracleSim

    class HtmlSecondPage(OracleSim):
        def handle(self, request: SimRequest) -> SimResponse:
            if request.path.endswith("/invoices") and request.param("offset") not in (None, "0"):
                return SimResponse(200, b"<!DOCTYPE html><html><title>Proxy login</title></html>", {"Content-Type": "text/html"})
            return super().handle(request)

    with HtmlSecondPage(size=12) as sim:
        app = make_app(tmp_path, {"occ": sim.source_config()}, page_size=5, max_retries=1)
        wh = Warehouse(app.warehouse)
        with pytest.raises(Exception) as err:
            run_source(app, "occ", warehouse=wh)
    text = str(err.value)
    assert "source 'occ'" in text and "not JSON but text/html" in text and "Proxy login" in text, text
    assert "/ccstore/v1/selfservice/invoices?" in text and "offset=5" in text, text
    with wh.reader() as con:
        assert con.execute("select count(*) from main._pipeline_cursors where source_name = 'occ'").fetchone()[0] == 0
        assert con.execute("select status from main._pipeline_runs").fetchall() == [("failed",)]
