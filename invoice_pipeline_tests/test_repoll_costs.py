"""What a re-poll of open invoices costs per source (issue 21): Oracle reads list pages and the
detail only of invoices whose list fields changed; CRM.COM's load compares balances so its re-poll
after that load costs nothing; SoftwareOne reads ids in batches. Oracle list items without an id are
quarantined, not fatal (issue 19.10)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import duckdb
import pytest

from invoice_pipeline import lifecycle
from invoice_pipeline.errors import SourceError
from invoice_pipeline.pipeline import build_source, run_source
from invoice_pipeline.sources.crmcom.simulator import SIMULATOR_CLASS as CrmSim
from invoice_pipeline.sources.oracle_occ.simulator import LIST_PATH
from invoice_pipeline.sources.oracle_occ.simulator import SIMULATOR_CLASS as OracleSim
from invoice_pipeline.sources.softwareone.client import REFETCH_CHUNK
from invoice_pipeline.sources.softwareone.simulator import SIMULATOR_CLASS as SwoSim
from invoice_pipeline_tests.conftest import make_app


def _oracle_calls(sim: Any) -> tuple[int, int]:
    """(list pages, detail calls) the simulator answered."""
    lists = sum(n for p, n in sim.requests.items() if p == LIST_PATH)
    details = sum(n for p, n in sim.requests.items() if p.startswith(LIST_PATH + "/"))
    return lists, details


def _open_count(app: Any) -> int:
    with duckdb.connect(str(app.warehouse.duckdb_path), read_only=True) as con:
        return con.execute("SELECT count(*) FROM main.invoices WHERE balance_due <> 0 AND NOT is_void").fetchone()[0]


@pytest.mark.parametrize("q_mode", ["honour", "ignore"])
def test_oracle_repoll_costs_list_pages_and_details_only_of_changed_invoices(tmp_path: Path, q_mode: str) -> None:
    with OracleSim(size=150, q_mode=q_mode) as sim:
        app = make_app(tmp_path, {"occ": sim.source_config()})
        run_source(app, "occ")
        paid = sim.mutate(payments=3, seed=5)["payments"]
        assert len(paid) == 3
        open_before = _open_count(app)
        assert open_before > 20
        sim.requests.clear()
        result = lifecycle.repoll_open_invoices(app, "occ")
        pages, details = _oracle_calls(sim)
        assert result.open_invoices == open_before
        assert details == 3 and result.detail_calls == 3  # not one per open invoice
        assert result.changed == 3 and result.found == 3
        assert 1 <= pages <= math.ceil(150 / 25) + 2 and result.pages == pages - 1  # one list call probes q
        assert result.api_calls == sum(sim.requests.values())  # login, probe, pages, details: all counted
        meta = result.as_metadata()
        assert meta["api_calls"] == result.api_calls and meta["detail_calls"] == 3 and meta["pages"] == pages - 1
        with duckdb.connect(str(app.warehouse.duckdb_path), read_only=True) as con:
            rows = con.execute("SELECT invoice_id FROM main.invoices WHERE _run_id = ?",
                               [result.summary.run_id]).fetchall()
        assert sorted(r[0] for r in rows) == sorted(paid)

        # Nothing changed since: the next re-poll reads the list and no detail at all.
        sim.requests.clear()
        again = lifecycle.repoll_open_invoices(app, "occ")
        assert _oracle_calls(sim)[1] == 0 and again.detail_calls == 0 and again.changed == 0


def test_oracle_repoll_without_a_warehouse_to_compare_reads_every_open_detail(tmp_path: Path) -> None:
    with OracleSim(size=60) as sim:
        app = make_app(tmp_path, {"occ": sim.source_config()})
        src = build_source(app, "occ")
        ids = sim.invoice_ids()[:7]
        try:
            got = [r.invoice_id for batch in src.repoll(ids) for r in batch]
        finally:
            src.close()
        assert sorted(got) == sorted(ids) and _oracle_calls(sim)[1] == 7


def test_crmcom_repoll_after_a_load_in_the_same_run_costs_no_call(tmp_path: Path) -> None:
    with CrmSim(size=60) as sim:
        app = make_app(tmp_path, {"crm": sim.source_config()})
        run_source(app, "crm")
        paid = sim.mutate(payments=4, seed=3)["payments"]
        second = run_source(app, "crm")
        assert second.extra["balances_compared"] == "all" and second.extra["invoices_changed_before_window"] == 4
        assert second.invoices_loaded == 4
        sim.requests.clear()
        result = lifecycle.repoll_open_invoices(app, "crm", after_run_id=second.run_id, load_compared_all=True)
        assert sum(sim.requests.values()) == 0 and result.api_calls == 0
        assert result.open_invoices == 0 and result.skipped_compared_by_load + result.skipped_just_loaded > 0
        with duckdb.connect(str(app.warehouse.duckdb_path), read_only=True) as con:
            written = {r[0] for r in con.execute("SELECT invoice_id FROM main.invoices WHERE _run_id = ?",
                                                 [second.run_id]).fetchall()}
        assert written == set(paid)
        # A third load with nothing changed loads nothing (unchanged balances are not rewritten).
        assert run_source(app, "crm").invoices_loaded == 0


def test_softwareone_repoll_reads_open_invoices_in_batches(tmp_path: Path) -> None:
    with SwoSim(size=300) as sim:
        app = make_app(tmp_path, {"swo": sim.source_config()})
        run_source(app, "swo")
        sim.mutate(payments=3, seed=2)
        n_open = _open_count(app)
        sim.requests.clear()
        result = lifecycle.repoll_open_invoices(app, "swo")
        assert result.open_invoices == n_open and result.changed == 3
        assert result.api_calls == sum(sim.requests.values()) <= math.ceil(n_open / REFETCH_CHUNK) + 1


class _OracleItemWithoutId(OracleSim):
    """A tenant whose list shows one invoice without its CustomerTransactionId."""

    hole: int | None = None

    def _list_item(self, inv: Any) -> dict[str, Any]:
        item = super()._list_item(inv)
        if inv.id == self.hole:
            item.pop("CustomerTransactionId")
        return item


@pytest.mark.parametrize("q_mode", ["honour", "ignore"])
def test_oracle_list_item_without_id_is_quarantined_and_the_rest_loads(tmp_path: Path, q_mode: str) -> None:
    with _OracleItemWithoutId(size=40, q_mode=q_mode) as sim:
        sim.hole = int(sim.invoice_ids()[7])
        app = make_app(tmp_path, {"occ": sim.source_config()})
        summary = run_source(app, "occ")
        assert summary.status == "success" and summary.invoices_loaded == 39 and summary.quarantined == 1
        assert summary.extra["items_without_id"] == 1
        with duckdb.connect(str(app.warehouse.duckdb_path), read_only=True) as con:
            quarantined = con.execute("SELECT invoice_id, reason, payload FROM occ._quarantine").fetchall()
            loaded = {r[0] for r in con.execute("SELECT invoice_id FROM main.invoices").fetchall()}
        assert len(quarantined) == 1 and not quarantined[0][0] and "CustomerTransactionId" in quarantined[0][1]
        assert str(sim.hole) not in loaded and len(loaded) == 39
        # An id listing with a hole must not mark anything deleted: deletion reconciliation fails loudly.
        with pytest.raises(SourceError, match="no CustomerTransactionId"):
            lifecycle.reconcile_deletions(app, "occ")


def test_oracle_repoll_ranges_skip_long_gaps_and_split_for_parallel_walks() -> None:
    from invoice_pipeline.sources.oracle_occ.client import _id_ranges

    ids = [str(n) for n in range(1000, 1100)] + [str(n) for n in range(5000, 5010)]
    assert _id_ranges(ids, 25) == [(1000, 1099), (5000, 5009)]  # the 3,900-id gap is not listed
    dense = [str(n) for n in range(0, 4000, 2)]  # 2,000 ids, no gap: halved into 4 parallel walks
    ranges = _id_ranges(dense, 25, 4)
    assert len(ranges) == 4 and ranges[0][0] == 0 and ranges[-1][1] == 3998
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))  # disjoint, in order
    assert _id_ranges(["12", "A-7"], 25) is None  # not numeric: the whole list instead


def test_agvance_repoll_reads_open_invoices_by_number_ranges(tmp_path: Path) -> None:
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS as AgvSim

    with AgvSim(size=300) as sim:
        app = make_app(tmp_path, {"agv": sim.source_config()})
        run_source(app, "agv")
        sim.mutate(payments=3, seed=2)
        n_open = _open_count(app)
        sim.requests.clear()
        result = lifecycle.repoll_open_invoices(app, "agv")
        assert result.open_invoices == n_open > 20 and result.changed == 3
        assert result.api_calls == sum(sim.requests.values()) <= 3  # a few calls, not one per invoice


def test_crmcom_backfill_that_leaves_newer_versions_does_not_claim_every_balance_compared(tmp_path: Path) -> None:
    from datetime import timedelta

    from invoice_pipeline.sources.base import Window
    from invoice_pipeline.timeutil import utc_now

    with CrmSim(size=60) as sim:
        app = make_app(tmp_path, {"crm": sim.source_config()})
        run_source(app, "crm")
        sim.mutate(updates=2, seed=4)  # two invoices modified now: after the backfill's window
        start = app.sources["crm"].start_date
        backfill = run_source(app, "crm", window=Window(start, utc_now() - timedelta(days=1)))
        assert backfill.extra["invoices_after_window"] >= 2 and "balances_compared" not in backfill.extra
