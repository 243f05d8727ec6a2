"""Lifecycle without HTTP: history versions, idempotence, deletions, reappearance, checks, aging.

An in-memory "server" (dict of payloads) stands in for a source, so every case runs in a second.
The per-source tests against the simulators are in test_lifecycle_sources.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from invoice_pipeline import lifecycle
from invoice_pipeline.history import history_candidates, history_out_of_sync, history_violations, record_history
from invoice_pipeline.config import AppConfig
from invoice_pipeline.errors import PipelineError
from invoice_pipeline.pipeline import run_source
from invoice_pipeline.replay import replay_source
from invoice_pipeline.sources.base import ConformedInvoice, SourceRecord, Window
from invoice_pipeline.timeutil import utc_now
from invoice_pipeline.warehouse import Warehouse

from .conftest import make_app
from invoice_pipeline.errors import ConfigError

from .fake_source import FakeSource, fake_config_block, invoice

TODAY = utc_now().date()


class ServerSource(FakeSource):
    """FakeSource over a mutable dict (the 'server'): modification windows, balances, due dates,
    customers, currencies, voids, and the two lifecycle reads."""

    def __init__(self, name: str, config: Any, server: dict[str, dict[str, Any]], listed: set[str] | None = None):
        super().__init__(name, config, [])
        self.server = server
        self.listed = listed  # what list_ids answers (default: the server's ids)
        self.fetched: list[str] = []

    def extract(self, window: Window) -> Iterator[list[SourceRecord]]:
        records = [self.identify(p) for p in self.server.values()]
        yield [r for r in records if r.last_modified_at and window.start <= r.last_modified_at <= window.end]

    def to_conformed(self, payload: dict[str, Any]) -> ConformedInvoice:
        conformed = super().to_conformed(payload)
        inv = conformed.invoice
        inv["balance_due"] = Decimal(payload.get("balance", "0"))
        inv["due_date"] = date.fromisoformat(payload["due"]) if payload.get("due") else None
        inv["invoice_date"] = date.fromisoformat(payload["issued"]) if payload.get("issued") else None
        inv["customer_id"] = payload.get("customer", "C1")
        inv["customer_name"] = f"Customer {inv['customer_id']}"
        inv["currency_code"] = payload.get("currency", "EUR")
        inv["is_void"] = bool(payload.get("void"))
        inv["status"] = "Void" if payload.get("void") else ("Paid" if inv["balance_due"] == 0 else "Open")
        return conformed

    def fetch_by_ids(self, ids: Collection[str], *, customer_ids: Collection[str] = ()) -> Iterator[list[SourceRecord]]:
        self.fetched.extend(sorted(ids))
        yield [self.identify(self.server[i]) for i in sorted(ids) if i in self.server]

    def list_ids(self, since: datetime | None = None) -> set[str]:
        return set(self.server) if self.listed is None else set(self.listed)


def setup(tmp_path: Path) -> tuple[AppConfig, Warehouse]:
    app = make_app(tmp_path, {"fake": fake_config_block()})
    return app, Warehouse(app.warehouse)


def load(app: AppConfig, server: dict, window: Window | None = None) -> Any:
    return run_source(app, "fake", window=window, source=ServerSource("fake", app.sources["fake"], server))


def history(wh: Warehouse, invoice_id: str | None = None) -> list[dict[str, Any]]:
    with wh.reader() as con:
        cur = con.execute(
            "SELECT * FROM main.invoice_history WHERE invoice_id = coalesce(?, invoice_id) ORDER BY invoice_id, valid_from",
            [invoice_id],
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def current(wh: Warehouse, invoice_id: str) -> dict[str, Any]:
    with wh.reader() as con:
        cur = con.execute("SELECT * FROM main.invoices WHERE invoice_id = ?", [invoice_id])
        names = [d[0] for d in cur.description]
        return dict(zip(names, cur.fetchone(), strict=True))


def open_inv(n: int, updated: str = "2025-01-01T00:00:00Z", balance: str = "22.22", due: str | None = None,
             **extra: Any) -> dict[str, Any]:
    return invoice(n, updated=updated, balance=balance, due=due or (TODAY + timedelta(days=10)).isoformat(), **extra)


def assert_contiguous(rows: list[dict[str, Any]]) -> None:
    for a, b in zip(rows, rows[1:], strict=False):
        assert a["valid_to"] == b["valid_from"] and a["valid_from"] < a["valid_to"]
    assert rows[-1]["valid_to"] is None


def test_versions_are_recorded_once_and_contiguous(tmp_path: Path) -> None:
    app, wh = setup(tmp_path)
    server = {"1": open_inv(1), "2": open_inv(2, updated="2025-02-01T00:00:00Z")}
    load(app, server)
    rows = history(wh)
    assert [(r["invoice_id"], r["valid_from"], r["valid_to"]) for r in rows] == [
        ("1", datetime(2025, 1, 1, tzinfo=UTC), None), ("2", datetime(2025, 2, 1, tzinfo=UTC), None)]
    assert rows[0]["balance_due"] == Decimal("22.22") and rows[0]["run_id"] == current(wh, "1")["_run_id"]

    # Re-runs, an overlapping window and a backfill over everything observe nothing new.
    load(app, server)
    load(app, server, Window(datetime(2024, 1, 1, tzinfo=UTC), utc_now()))
    assert len(history(wh)) == 2

    # A real change (modification time moved): the new version starts at the new last-modified time.
    server["1"] = open_inv(1, updated="2025-03-01T00:00:00Z", balance="11.11")
    load(app, server, Window(datetime(2025, 2, 15, tzinfo=UTC), utc_now()))
    rows = history(wh, "1")
    assert [r["balance_due"] for r in rows] == [Decimal("22.22"), Decimal("11.11")]
    assert rows[1]["valid_from"] == datetime(2025, 3, 1, tzinfo=UTC)
    assert_contiguous(rows)

    # A backfill that reads an older version: the merge rejects it, so the history does not move.
    stale = {"1": open_inv(1, updated="2025-01-01T00:00:00Z", balance="99.99")}
    summary = load(app, stale, Window(datetime(2024, 1, 1, tzinfo=UTC), utc_now()))
    assert summary.invoices_stale == 1
    assert len(history(wh, "1")) == 2 and current(wh, "1")["balance_due"] == Decimal("11.11")
    with wh.reader() as con:
        assert history_violations(con) == (0, [])
        assert history_out_of_sync(con) == (0, [])


def test_repoll_sees_a_payment_that_did_not_move_the_modification_time(tmp_path: Path) -> None:
    app, wh = setup(tmp_path)
    server = {"1": open_inv(1), "2": open_inv(2), "3": open_inv(3, balance="0"),
              "4": open_inv(4, void=True), "5": open_inv(5, due=(TODAY - timedelta(days=400)).isoformat())}
    load(app, server)
    server["1"] = {**server["1"], "balance": "2.22"}  # paid in part, same "updated"
    server["5"] = {**server["5"], "balance": "0"}
    load(app, server)  # the incremental window cannot see it
    assert current(wh, "1")["balance_due"] == Decimal("22.22")

    with wh.reader() as con:
        cursor = wh.cursor(con, "fake")
    src = ServerSource("fake", app.sources["fake"], server)
    result = lifecycle.repoll_open_invoices(app, "fake", source=src, horizon=timedelta(days=365))
    # Open = balance <> 0, not void, not deleted, due within the horizon: 1 and 2 (5 is too old).
    assert src.fetched == ["1", "2"] and result.open_invoices == 2 and result.found == 2 and result.changed == 1
    # Loaded like any run (run log, raw payload store), the cursor left where the last load put it.
    assert result.summary is not None
    with wh.reader() as con:
        assert wh.cursor(con, "fake") == cursor
        assert con.execute("SELECT mode, status, invoices_loaded FROM main._pipeline_runs WHERE run_id = ?",
                           [result.summary.run_id]).fetchall() == [("repoll", "success", 2)]
        assert con.execute("SELECT count(*) FROM fake._raw_invoices WHERE run_id = ?",
                           [result.summary.run_id]).fetchone()[0] == 1  # the changed payload, kept once
    assert current(wh, "1")["balance_due"] == Decimal("2.22")
    assert current(wh, "5")["balance_due"] == Decimal("22.22")
    rows = history(wh, "1")
    assert [r["balance_due"] for r in rows] == [Decimal("22.22"), Decimal("2.22")]
    assert rows[0]["last_modified_at"] == rows[1]["last_modified_at"]
    # No modification time to go by: the version starts when the pipeline observed it.
    assert rows[1]["valid_from"] == rows[1]["observed_at"] > rows[0]["valid_from"]
    assert_contiguous(rows)

    # A wider horizon reaches the old invoice; a second re-poll changes nothing more.
    lifecycle.repoll_open_invoices(app, "fake", source=ServerSource("fake", app.sources["fake"], server),
                                   horizon=timedelta(days=1000))
    assert current(wh, "5")["balance_due"] == Decimal("0")
    again = lifecycle.repoll_open_invoices(app, "fake", source=ServerSource("fake", app.sources["fake"], server),
                                           horizon=timedelta(days=1000))
    assert again.open_invoices == 2 and again.changed == 0 and len(history(wh)) == 7


def test_repoll_after_a_load_skips_only_what_that_load_just_wrote(tmp_path: Path) -> None:
    app, wh = setup(tmp_path)
    server = {"1": open_inv(1), "2": open_inv(2)}
    load(app, server)
    server["3"] = open_inv(3, updated="2025-03-01T00:00:00Z")
    later = load(app, server, window=Window(datetime(2025, 2, 1, tzinfo=UTC), utc_now()))  # reads 3 only
    assert later.invoices_loaded == 1
    server["1"] = {**server["1"], "balance": "1.11"}  # payments that do not move the modification time
    server["3"] = {**server["3"], "balance": "3.33"}

    src = ServerSource("fake", app.sources["fake"], server)
    result = lifecycle.repoll_open_invoices(app, "fake", source=src, after_run_id=later.run_id)
    assert src.fetched == ["1", "2"] and result.open_invoices == 2 and result.skipped_just_loaded == 1
    assert current(wh, "1")["balance_due"] == Decimal("1.11")
    assert current(wh, "3")["balance_due"] == Decimal("22.22")  # read moments before, not again
    # The next re-poll that follows no load of its own re-reads it.
    again = lifecycle.repoll_open_invoices(app, "fake", source=ServerSource("fake", app.sources["fake"], server))
    assert again.open_invoices == 3 and again.skipped_just_loaded == 0
    assert current(wh, "3")["balance_due"] == Decimal("3.33")


def test_open_invoice_selection(tmp_path: Path) -> None:
    app, wh = setup(tmp_path)
    old = (TODAY - timedelta(days=100)).isoformat()
    server = {
        "recent": open_inv(1, due=(TODAY - timedelta(days=5)).isoformat()),
        "old_due_recent_issue": open_inv(2, due=old, issued=(TODAY - timedelta(days=3)).isoformat()),
        "old": open_inv(3, due=old, issued=old),
        "credit": open_inv(4, balance="-5.00"),
        "paid": open_inv(5, balance="0"),
        "void": open_inv(6, void=True),
    }
    for key, payload in server.items():
        payload["id"] = key
    load(app, server)
    with wh.reader() as con:
        assert [i for i, _ in lifecycle.open_invoices(con, "fake", timedelta(days=30), TODAY)] == [
            "credit", "old_due_recent_issue", "recent"]
        assert len(lifecycle.open_invoices(con, "fake", timedelta(days=365), TODAY)) == 4


def test_deletion_is_marked_kept_and_undone_when_the_invoice_reappears(tmp_path: Path) -> None:
    app, wh = setup(tmp_path)
    server = {str(n): open_inv(n) for n in range(1, 5)}
    load(app, server)
    gone = server.pop("3")

    result = lifecycle.reconcile_deletions(app, "fake", source=ServerSource("fake", app.sources["fake"], server))
    assert result.deleted == ["3"] and result.missing == 1 and result.checked == 4
    row = current(wh, "3")
    assert row["is_deleted"] and row["deleted_detected_at"] is not None and row["total_amount"] == Decimal("22.22")
    assert not current(wh, "2")["is_deleted"]
    rows = history(wh, "3")
    assert [r["is_deleted"] for r in rows] == [False, True]
    assert rows[1]["valid_from"] == row["deleted_detected_at"]
    # Reconciling again finds nothing new; re-poll skips deleted invoices.
    again = lifecycle.reconcile_deletions(app, "fake", source=ServerSource("fake", app.sources["fake"], server))
    assert again.deleted == [] and len(history(wh)) == 5
    src = ServerSource("fake", app.sources["fake"], server)
    lifecycle.repoll_open_invoices(app, "fake", source=src)
    assert "3" not in src.fetched

    # It comes back unchanged: the next reconciliation loads it, which un-deletes it.
    server["3"] = gone
    back = lifecycle.reconcile_deletions(app, "fake", source=ServerSource("fake", app.sources["fake"], server))
    assert back.reappeared == ["3"] and back.deleted == []
    row = current(wh, "3")
    assert not row["is_deleted"] and row["deleted_detected_at"] is None
    rows = history(wh, "3")
    assert [r["is_deleted"] for r in rows] == [False, True, False]
    assert_contiguous(rows)

    # Deleted again, then modified at the source: an incremental load un-deletes it too.
    server.pop("3")
    lifecycle.reconcile_deletions(app, "fake", source=ServerSource("fake", app.sources["fake"], server))
    server["3"] = open_inv(3, updated=(utc_now() - timedelta(minutes=1)).isoformat())
    load(app, server)
    assert not current(wh, "3")["is_deleted"] and len(history(wh, "3")) == 5
    with wh.reader() as con:
        assert history_violations(con)[0] == 0


def test_missing_from_the_listing_but_still_readable_is_not_deleted(tmp_path: Path) -> None:
    app, wh = setup(tmp_path)
    server = {str(n): open_inv(n) for n in range(1, 5)}
    load(app, server)
    src = ServerSource("fake", app.sources["fake"], server, listed={"1", "2"})  # the listing raced a change
    result = lifecycle.reconcile_deletions(app, "fake", source=src)
    assert result.missing == 2 and result.confirmed_present == 2 and result.deleted == []
    assert src.fetched == ["3", "4"]
    with wh.reader() as con:
        assert con.execute("SELECT count(*) FROM main.invoices WHERE is_deleted").fetchone()[0] == 0


def test_a_listing_that_misses_most_invoices_deletes_nothing(tmp_path: Path) -> None:
    app, wh = setup(tmp_path)
    server = {str(n): open_inv(n) for n in range(1, 31)}
    load(app, server)
    with pytest.raises(PipelineError, match="reconcile_max_deleted_share"):
        lifecycle.reconcile_deletions(app, "fake", source=ServerSource("fake", app.sources["fake"], {"1": server["1"]}))
    with wh.reader() as con:
        assert con.execute("SELECT count(*) FROM main.invoices WHERE is_deleted").fetchone()[0] == 0
    assert len(history(wh)) == 30


def test_replay_adds_no_history_and_deletion_marks_survive_it(tmp_path: Path) -> None:
    app, wh = setup(tmp_path)
    server = {str(n): open_inv(n) for n in range(1, 4)}
    load(app, server)
    time.sleep(1.01)  # replay tells two payloads of one last-modified time apart by their (whole-second) load time
    server["2"] = {**server["2"], "balance": "1.00"}
    lifecycle.repoll_open_invoices(app, "fake", source=ServerSource("fake", app.sources["fake"], server))
    server.pop("3")
    lifecycle.reconcile_deletions(app, "fake", source=ServerSource("fake", app.sources["fake"], server))
    before = history(wh)
    assert len(before) == 5

    replay_source(app, "fake", wh, source=ServerSource("fake", app.sources["fake"], server))
    assert current(wh, "2")["balance_due"] == Decimal("1.00")  # the newest payload was replayed
    record_history(wh, "fake")  # what any later run of the source does
    assert current(wh, "3")["is_deleted"]
    assert history(wh) == before
    with wh.reader() as con:
        assert history_out_of_sync(con) == (0, [])


def test_history_check_catches_gaps_overlaps_and_lost_current_versions(tmp_path: Path) -> None:
    app, wh = setup(tmp_path)
    server = {str(n): open_inv(n) for n in range(1, 5)}
    load(app, server)
    for n in ("1", "2", "3"):
        server[n] = open_inv(int(n), updated="2025-06-01T00:00:00Z")
    load(app, server, Window(datetime(2025, 5, 1, tzinfo=UTC), utc_now()))
    with wh.writer() as con:
        assert history_violations(con) == (0, [])
        june = datetime(2025, 6, 1, tzinfo=UTC)
        con.execute("UPDATE main.invoice_history SET valid_to = valid_to - INTERVAL 1 SECOND "
                    "WHERE invoice_id = '1' AND valid_to IS NOT NULL")
        con.execute("UPDATE main.invoice_history SET valid_from = ? WHERE invoice_id = '2' AND valid_to IS NULL",
                    [june - timedelta(days=1)])
        con.execute("UPDATE main.invoice_history SET valid_to = ? WHERE invoice_id = '3' AND valid_to IS NULL",
                    [june + timedelta(days=1)])
        total, rows = history_violations(con)
    assert total == 3
    assert {(rule, inv) for rule, _, inv, _ in rows} == {
        ("history_gap", "1"), ("history_overlap", "2"), ("history_no_current_version", "3")}


def test_aging_snapshot_per_day_from_history(tmp_path: Path) -> None:
    app, wh = setup(tmp_path)
    day = TODAY

    def due(days_past: int) -> str:
        return (day - timedelta(days=days_past)).isoformat()

    server = {
        "a": open_inv(1, due=due(-5), balance="10.00", customer="C1"),  # not yet due
        "b": open_inv(2, due=due(10), balance="20.00", customer="C1"),  # 1-30
        "c": open_inv(3, due=due(30), balance="30.00", customer="C1"),  # 1-30 (the 30th day)
        "d": open_inv(4, due=due(45), balance="40.00", customer="C1"),  # 31-60
        "e": open_inv(5, due=due(200), balance="50.00", customer="C2", currency="USD"),  # 90+
        "f": open_inv(6, due=due(10), balance="0", customer="C1"),  # paid: not aged
        "g": open_inv(7, due=due(10), balance="70.00", customer="C1", void=True),  # void: not aged
        "h": open_inv(8, due=due(10), balance="80.00", customer="C1"),  # deleted below: not aged
    }
    for key, payload in server.items():
        payload["id"] = key
    load(app, server)
    server.pop("h")
    lifecycle.reconcile_deletions(app, "fake", source=ServerSource("fake", app.sources["fake"], server))
    server["b"] = {**server["b"], "balance": "5.00"}  # a payment observed today
    lifecycle.repoll_open_invoices(app, "fake", source=ServerSource("fake", app.sources["fake"], server))

    result = lifecycle.build_aging_snapshot(wh, day)
    assert result["open_invoices"] == 5

    def snapshot(d: date) -> list[tuple]:
        with wh.reader() as con:
            return con.execute(
                "SELECT source_name, customer_id, currency_code, aging_bucket, invoice_count, balance_due "
                "FROM main.ar_aging_snapshot WHERE snapshot_date = ? ORDER BY 2, 3, 4", [d]).fetchall()

    expected = [("fake", "C1", "EUR", "1-30", 2, Decimal("35.00")), ("fake", "C1", "EUR", "31-60", 1, Decimal("40.00")),
                ("fake", "C1", "EUR", "current", 1, Decimal("10.00")), ("fake", "C2", "USD", "90+", 1, Decimal("50.00"))]
    assert snapshot(day) == expected
    lifecycle.build_aging_snapshot(wh, day)  # the same day again: replaced, not doubled
    assert snapshot(day) == expected

    # Yesterday, from the history: before today's payment and deletion, aged one day less.
    yesterday = day - timedelta(days=1)
    lifecycle.build_aging_snapshot(wh, yesterday)
    assert snapshot(yesterday) == [
        ("fake", "C1", "EUR", "1-30", 3, Decimal("130.00")), ("fake", "C1", "EUR", "31-60", 1, Decimal("40.00")),
        ("fake", "C1", "EUR", "current", 1, Decimal("10.00")), ("fake", "C2", "USD", "90+", 1, Decimal("50.00"))]
    assert snapshot(day) == expected


def test_ar_aging_view_and_snapshot_share_one_bucket_definition(tmp_path: Path) -> None:
    """Today's snapshot and the ar_aging view put every open item in the same bucket, an undated
    one (neither due nor invoice date) in no_due_date in both (its days_overdue is null)."""
    app, wh = setup(tmp_path)
    server = {
        "1": open_inv(1, due=(TODAY + timedelta(days=3)).isoformat(), balance="10.00"),  # current
        "2": open_inv(2, due=(TODAY - timedelta(days=1)).isoformat(), balance="20.00"),  # 1-30
        "3": open_inv(3, due=(TODAY - timedelta(days=61)).isoformat(), balance="30.00"),  # 61-90
        "4": open_inv(4, due=(TODAY - timedelta(days=91)).isoformat(), balance="40.00"),  # 90+
        "5": invoice(5, balance="50.00"),  # no due date, no invoice date
        "6": invoice(6, balance="60.00", issued=(TODAY - timedelta(days=45)).isoformat()),  # 31-60 by invoice date
    }
    load(app, server)
    lifecycle.build_aging_snapshot(wh, TODAY)
    with wh.reader() as con:
        view = con.execute("SELECT aging_bucket, bucket_order, sum(open_items), sum(balance_due) FROM main.ar_aging "
                           "GROUP BY ALL ORDER BY bucket_order").fetchall()
        table = con.execute("SELECT aging_bucket, sum(invoice_count), sum(balance_due) FROM main.ar_aging_snapshot "
                            "WHERE snapshot_date = ? GROUP BY ALL", [TODAY]).fetchall()
        undated = con.execute("SELECT due_date, days_overdue FROM main.ar_open_items WHERE invoice_id = '5'").fetchall()
    assert view == [("current", 0, 1, Decimal("10.00")), ("1-30", 1, 1, Decimal("20.00")),
                    ("31-60", 2, 1, Decimal("60.00")), ("61-90", 3, 1, Decimal("30.00")),
                    ("90+", 4, 1, Decimal("40.00")), ("no_due_date", 5, 1, Decimal("50.00"))]
    assert sorted(table) == sorted((b, n, amount) for b, _, n, amount in view)
    assert undated == [(None, None)]


def test_settings_defaults_and_overrides() -> None:
    from invoice_pipeline.config import parse_config

    cfg = parse_config({"sources": {"a": fake_config_block()}}).sources["a"]
    assert (cfg.repoll_horizon, cfg.repoll_schedule, cfg.reconcile_schedule, cfg.reconcile_max_deleted_share) == (
        None, None, "0 3 * * *", 0.5)

    block = {**fake_config_block(), "repoll_horizon": "30d", "repoll_schedule": "*/30 * * * *",
             "reconcile_schedule": "0 4 * * 0", "reconcile_max_deleted_share": 0.2}
    s = parse_config({"sources": {"a": block}}).sources["a"]
    assert (s.repoll_horizon, s.repoll_schedule, s.reconcile_schedule, s.reconcile_max_deleted_share) == (
        timedelta(days=30), "*/30 * * * *", "0 4 * * 0", 0.2)
    with pytest.raises(ConfigError, match="sources.a.repoll_schedule"):
        parse_config({"sources": {"a": {**fake_config_block(), "repoll_schedule": "often"}}})


# -- the history step costs what changed ------------------------------------------------------------
def history_steps(caplog: pytest.LogCaptureFixture) -> list[tuple[int, int]]:
    """(candidates examined, versions added) of every history step logged so far."""
    return [(r.args[1], r.args[2]) for r in caplog.records  # type: ignore[index]
            if r.name == "invoice_pipeline.history" and r.msg.startswith("source '%s': history examined")]


def candidates(wh: Warehouse) -> int:
    with wh.reader() as con:
        return history_candidates(con, "fake")


def test_history_examines_only_the_invoices_a_load_wrote(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="invoice_pipeline.history")
    app, wh = setup(tmp_path)
    server = {str(n): open_inv(n) for n in range(1, 21)}
    load(app, server)
    assert history_steps(caplog) == [(20, 20)]
    assert candidates(wh) == 0
    # A sync with nothing new (the history asset, a replayed step) examines nothing.
    caplog.clear()
    assert record_history(wh, "fake") == 0
    assert history_steps(caplog) == [(0, 0)]

    # One invoice modified: a window that reads only it examines only it and adds one version.
    server["7"] = open_inv(7, updated="2025-03-01T00:00:00Z", balance="1.00")
    caplog.clear()
    load(app, server, Window(datetime(2025, 2, 1, tzinfo=UTC), utc_now()))
    assert history_steps(caplog) == [(1, 1)]
    assert [r["balance_due"] for r in history(wh, "7")] == [Decimal("22.22"), Decimal("1.00")]

    # A re-poll rewrites all 20 open invoices, one of them with a payment: its own step examines
    # the 20 it wrote, one is a new version, and none stays a candidate for later steps.
    server["3"] = {**server["3"], "balance": "2.00"}
    caplog.clear()
    result = lifecycle.repoll_open_invoices(app, "fake", source=ServerSource("fake", app.sources["fake"], server))
    assert result.found == 20 and result.changed == 1
    assert history_steps(caplog) == [(20, 1)]
    assert candidates(wh) == 0 and record_history(wh, "fake") == 0
    with wh.reader() as con:
        assert history_out_of_sync(con) == (0, [])
        assert history_violations(con) == (0, [])


def test_a_deletion_mark_is_examined_and_becomes_a_deleted_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="invoice_pipeline.history")
    app, wh = setup(tmp_path)
    server = {str(n): open_inv(n) for n in range(1, 6)}
    load(app, server)
    server.pop("4")
    caplog.clear()
    # The mark is an UPDATE that leaves _loaded_at and _run_id as they were: only is_deleted tells.
    lifecycle.reconcile_deletions(app, "fake", source=ServerSource("fake", app.sources["fake"], server))
    assert history_steps(caplog) == [(1, 1)]
    assert [r["is_deleted"] for r in history(wh, "4")] == [False, True]
    assert candidates(wh) == 0 and record_history(wh, "fake") == 0


def test_same_second_runs_and_a_crashed_run_seen_mid_run_lose_no_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """_loaded_at is the run's start cut to whole seconds, shared by all batches of a run: equal
    load times must not hide a change."""
    import invoice_pipeline.pipeline as pipeline_module
    from invoice_pipeline.batch import prepare_batch

    app, wh = setup(tmp_path)
    server = {str(n): open_inv(n) for n in range(1, 4)}
    frozen = utc_now().replace(microsecond=0)
    monkeypatch.setattr(pipeline_module, "utc_now", lambda: frozen)
    load(app, server)
    # A payment re-polled by a run started in the same second: same _loaded_at, another run.
    server["1"] = {**server["1"], "balance": "5.00"}
    result = lifecycle.repoll_open_invoices(app, "fake", source=ServerSource("fake", app.sources["fake"], server))
    assert result.changed == 1 and current(wh, "1")["_loaded_at"] == history(wh, "1")[0]["observed_at"]
    assert [r["balance_due"] for r in history(wh, "1")] == [Decimal("22.22"), Decimal("5.00")]

    # A run writes invoice 2 in two batches (it changed while being read); another process's
    # history step runs between them; the run dies before its own history step.
    src = ServerSource("fake", app.sources["fake"], server)

    def write(payload: dict[str, Any]) -> None:
        batch, _ = prepare_batch(src, [src.identify(payload)], "crashed-run", frozen)
        with wh.writer() as con:
            wh.write_batch(con, batch)

    write(open_inv(2, updated="2025-05-01T00:00:00Z", balance="8.00"))
    assert record_history(wh, "fake") == 1
    write(open_inv(2, updated="2025-05-01T00:00:00Z", balance="4.00"))
    assert candidates(wh) == 1  # same _loaded_at and _run_id as its current version
    assert record_history(wh, "fake") == 1  # the next sync
    assert [r["balance_due"] for r in history(wh, "2")] == [Decimal("22.22"), Decimal("8.00"), Decimal("4.00")]
    with wh.reader() as con:
        assert history_out_of_sync(con) == (0, [])
        assert history_violations(con) == (0, [])


def test_a_failed_runs_committed_batches_get_their_history_on_the_next_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, wh = setup(tmp_path)
    server = {str(n): open_inv(n) for n in range(1, 4)}
    load(app, server)
    server["2"] = open_inv(2, updated="2025-03-01T00:00:00Z", balance="3.00")

    def died(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("died before its history step")

    # The run's batches commit, then it fails: it is in the run log, as failed.
    import invoice_pipeline.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "record_history", died)  # the load's own history step
    with pytest.raises(RuntimeError, match="died before"):
        load(app, server, Window(datetime(2025, 2, 1, tzinfo=UTC), utc_now()))
    monkeypatch.undo()
    failed_run = current(wh, "2")["_run_id"]
    with wh.reader() as con:
        assert con.execute("SELECT status FROM main._pipeline_runs WHERE run_id = ?", [failed_run]).fetchall() == [
            ("failed",)]
    assert candidates(wh) == 1
    assert record_history(wh, "fake") == 1
    assert [r["balance_due"] for r in history(wh, "2")] == [Decimal("22.22"), Decimal("3.00")]
    # A failed run's rows stay candidates until a later run rewrites them; the hash finds nothing.
    assert candidates(wh) == 1 and record_history(wh, "fake") == 0
