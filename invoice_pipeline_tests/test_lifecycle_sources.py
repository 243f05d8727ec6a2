"""Lifecycle against each source's simulator: payments that do not move the modification time
converge through the re-poll, deleted invoices are marked (never erased), history stays clean."""

from __future__ import annotations

import importlib
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from invoice_pipeline import lifecycle
from invoice_pipeline.history import history_out_of_sync, history_violations
from invoice_pipeline.pipeline import build_source, run_source
from invoice_pipeline.sources.base import Window
from invoice_pipeline.timeutil import utc_now
from invoice_pipeline.warehouse import Warehouse

from .conftest import make_app

SOURCES = ["oracle_occ", "crmcom", "softwareone", "agvance"]
WIDE = timedelta(days=3650)  # the simulators' data reach back further than the default horizon


def source_truth(app, name: str) -> dict[str, tuple[Decimal, str]]:
    """invoice_id -> (balance_due, status) as the source serves it now, read the ordinary way."""
    src = build_source(app, name)
    try:
        window = Window(app.sources[name].start_date, utc_now() + timedelta(days=1))
        out = {}
        for batch in src.extract(window):
            for rec in batch:
                inv = src.to_conformed(rec.payload).invoice
                out[rec.invoice_id] = (inv["balance_due"], inv["status"])
        return out
    finally:
        src.close()


def warehouse_state(wh: Warehouse) -> dict[str, tuple[Decimal, str, bool]]:
    with wh.reader() as con:
        rows = con.execute("SELECT invoice_id, balance_due, status, is_deleted FROM main.invoices").fetchall()
    return {i: (b, s, d) for i, b, s, d in rows}


@pytest.mark.parametrize("source_type", SOURCES)
def test_repoll_converges_and_deletions_are_marked(tmp_path: Path, source_type: str) -> None:
    sim_class = importlib.import_module(f"invoice_pipeline.sources.{source_type}.simulator").SIMULATOR_CLASS
    with sim_class(size=40) as sim:
        app = make_app(tmp_path, {"src": sim.source_config()})
        wh = Warehouse(app.warehouse)
        run_source(app, "src")
        before = warehouse_state(wh)
        touched = sim.mutate(payments=4, deletes=2, updates=1)
        paid, deleted = touched["payments"], sorted(touched["deleted"])
        assert len(paid) == 4 and len(deleted) == 2

        second = run_source(app, "src")
        if source_type == "crmcom":
            # CRM.COM's incremental read lists every invoice anyway: it compares the balances of those
            # outside the window with the stored ones and loads the 4 paid ones with the 1 updated.
            assert second.invoices_loaded == 5 and second.extra["balances_compared"] == "all"
            assert all(warehouse_state(wh)[i][0] != before[i][0] for i in paid)
        else:
            # The payments did not move the modification time: an incremental run does not see them.
            assert second.invoices_loaded == 1
            assert {i: warehouse_state(wh)[i][0] for i in paid} == {i: before[i][0] for i in paid}

        result = lifecycle.repoll_open_invoices(app, "src", horizon=WIDE)
        assert result.found >= (0 if source_type == "crmcom" else 4)
        assert result.changed == (0 if source_type == "crmcom" else 4)
        truth = source_truth(app, "src")
        state = warehouse_state(wh)
        assert {i: v[:2] for i, v in state.items() if i in truth} == truth  # every balance and status converged
        assert all(state[i][0] != before[i][0] for i in paid)
        with wh.reader() as con:
            versions = con.execute(
                "SELECT invoice_id, count(*), count(DISTINCT last_modified_at) FROM main.invoice_history "
                "WHERE invoice_id IN (SELECT unnest(?)) GROUP BY 1", [paid]).fetchall()
        assert sorted(v[1:] for v in versions) == [(2, 1)] * 4  # a new version, same modification time

        rec = lifecycle.reconcile_deletions(app, "src")
        assert rec.deleted == deleted and rec.reappeared == [] and rec.checked == 40
        state = warehouse_state(wh)
        assert len(state) == 40 and sorted(i for i, v in state.items() if v[2]) == deleted
        assert set(truth) == set(state) - set(deleted)
        again = lifecycle.reconcile_deletions(app, "src")
        assert again.deleted == [] and again.missing == 0
        with wh.reader() as con:
            assert con.execute("SELECT count(*) FROM main.invoice_history").fetchone()[0] == 40 + 1 + 4 + 2
            assert con.execute(
                "SELECT count(*) FROM main.invoices WHERE is_deleted AND deleted_detected_at IS NOT NULL").fetchone()[0] == 2
            assert history_violations(con) == (0, [])
            assert history_out_of_sync(con) == (0, [])
