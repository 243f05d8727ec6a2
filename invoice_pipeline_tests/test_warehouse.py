"""The generic load path: merge rules, schema evolution, quarantine, cursor, hostile names."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import pytest

from invoice_pipeline.pipeline import run_source
from invoice_pipeline.sources.base import Window
from invoice_pipeline.warehouse import Warehouse, quote
from invoice_pipeline.timeutil import parse_timestamp

from .conftest import make_app
from .fake_source import FakeSource, fake_config_block, invoice


def load(tmp_path: Path, payloads: list[dict], **kw):
    app = make_app(tmp_path, {"fake": fake_config_block()})
    src = FakeSource("fake", app.sources["fake"], payloads, **kw)
    return app, run_source(app, "fake", source=src)


def query(app, sql: str):
    with Warehouse(app.warehouse).writer() as con:
        return con.execute(sql).fetchall()


def test_load_rerun_no_duplicates_and_children_replaced(tmp_path: Path) -> None:
    app, s = load(tmp_path, [invoice(1), invoice(2, lines=3)])
    assert s.invoices_loaded == 2
    assert query(app, "SELECT count(*), sum(total_amount), sum(net_amount), sum(tax_amount) FROM main.invoices") == [
        (2, Decimal("55.5500"), Decimal("50.5000"), Decimal("5.0500"))
    ]
    load(tmp_path, [invoice(1), invoice(2, lines=3)])
    assert query(app, "SELECT count(*) FROM fake.invoices")[0][0] == 2
    assert query(app, "SELECT count(*) FROM fake.invoices__lines")[0][0] == 5
    # a newer version with a line deleted at the source: the line disappears everywhere
    load(tmp_path, [invoice(2, updated="2025-02-01T00:00:00Z", lines=1)])
    assert query(app, "SELECT count(*) FROM fake.invoices__lines WHERE _invoice_id = '2'")[0][0] == 1
    assert query(app, "SELECT count(*) FROM main.invoice_lines WHERE invoice_id = '2'")[0][0] == 1
    assert query(app, "SELECT count(*) FROM fake._raw_invoices")[0][0] == 3  # two versions of #2, one of #1


def test_older_version_never_overwrites_newer(tmp_path: Path) -> None:
    app, _ = load(tmp_path, [invoice(1, updated="2025-03-01T00:00:00Z", lines=1)])
    _, s = load(tmp_path, [invoice(1, updated="2025-01-01T00:00:00Z", lines=4)])
    assert (s.invoices_loaded, s.invoices_stale) == (0, 1)
    assert query(app, "SELECT count(*) FROM main.invoice_lines")[0][0] == 1
    assert query(app, "SELECT _last_modified_at FROM fake.invoices")[0][0] == parse_timestamp("2025-03-01T00:00:00Z")


def test_within_batch_duplicates_keep_the_newest(tmp_path: Path) -> None:
    app, _ = load(tmp_path, [invoice(1, updated="2025-03-01T00:00:00Z", lines=1), invoice(1, updated="2025-01-01T00:00:00Z", lines=3)])
    assert query(app, "SELECT count(*) FROM main.invoice_lines")[0][0] == 1


def test_new_fields_become_columns(tmp_path: Path) -> None:
    app, _ = load(tmp_path, [invoice(1)])
    load(tmp_path, [invoice(2, surprise={"deep": "yes"})])
    assert query(app, 'SELECT "surprise__deep" FROM fake.invoices WHERE _invoice_id = \'2\'') == [("yes",)]
    assert query(app, 'SELECT "surprise__deep" FROM fake.invoices WHERE _invoice_id = \'1\'') == [(None,)]


def test_bad_record_quarantined_rest_loads(tmp_path: Path) -> None:
    bad_amount = invoice(3)
    bad_amount["lines"][0]["amount"] = "12,5"
    no_total = invoice(4)
    del no_total["total"]
    app, s = load(tmp_path, [invoice(1), bad_amount, no_total, {"updated": "2025-01-01T00:00:00Z"}])
    assert s.invoices_loaded == 1 and s.quarantined == 3
    rows = dict(query(app, "SELECT coalesce(invoice_id, '?'), reason FROM fake._quarantine"))
    assert "not a number: '12,5'" in rows["3"]
    assert "total: missing" in rows["4"]
    assert "no invoice key" in rows["?"]


def test_failed_run_keeps_cursor_and_rerun_completes(tmp_path: Path) -> None:
    app, first = load(tmp_path, [invoice(1)])
    # an older cursor, so that the successful re-run visibly moves it
    query(app, "UPDATE main._pipeline_cursors SET cursor_at = TIMESTAMPTZ '2025-06-01 00:00:00+00'")
    cursor = query(app, "SELECT cursor_at FROM main._pipeline_cursors")[0][0]
    payloads = [invoice(n, updated="2026-01-01T00:00:00Z") for n in range(2, 8)]
    with pytest.raises(RuntimeError):
        load(tmp_path, payloads, fail_after=5)
    assert query(app, "SELECT cursor_at FROM main._pipeline_cursors")[0][0] == cursor
    assert query(app, "SELECT error FROM main._pipeline_runs WHERE status = 'failed'") == [("source died mid-run",)]
    # the first batch committed (merges are idempotent); the pending one died with the run
    assert query(app, "SELECT count(*) FROM main.invoices")[0][0] == 3
    _, s = load(tmp_path, payloads)
    assert query(app, "SELECT count(*) FROM main.invoices")[0][0] == 7
    assert query(app, "SELECT cursor_at FROM main._pipeline_cursors")[0][0] > cursor


def test_backfill_window_does_not_move_cursor(tmp_path: Path) -> None:
    app, _ = load(tmp_path, [invoice(1)])
    cursor = query(app, "SELECT cursor_at FROM main._pipeline_cursors")[0][0]
    src = FakeSource("fake", app.sources["fake"], [invoice(9)])
    window = Window(parse_timestamp("2024-06-01T00:00:00Z"), parse_timestamp("2024-07-01T00:00:00Z"))
    s = run_source(app, "fake", source=src, window=window)
    assert s.mode == "backfill" and s.invoices_loaded == 1
    assert query(app, "SELECT cursor_at FROM main._pipeline_cursors")[0][0] == cursor


def test_records_before_start_date_are_not_loaded(tmp_path: Path) -> None:
    app, s = load(tmp_path, [invoice(1, updated="2023-12-31T23:59:59Z"), invoice(2)])
    assert s.invoices_before_start == 1
    assert query(app, "SELECT invoice_id FROM main.invoices") == [("2",)]


def test_hostile_field_names_load_safely(tmp_path: Path) -> None:
    hostile = {
        'a"; DROP TABLE main.invoices; --': "x", "Größe": "1", "Rate": "1", "rate": "2", "../../etc": "p",
        "x" * 300: "long", "rows": [{"Col'Name": 1, "col'name": 2, "with space": 3, "_invoice_id": "forged"}],
        "../escape": [{"a": 1}],
    }
    app, s = load(tmp_path, [invoice(1, **hostile)])
    assert s.invoices_loaded == 1
    assert query(app, "SELECT count(*) FROM main.invoices")[0][0] == 1
    cols = {r[0] for r in query(app, "SELECT column_name FROM information_schema.columns WHERE table_schema='fake' AND table_name='invoices'")}
    assert {"Größe", 'a"; DROP TABLE main.invoices; --'} <= cols and len({c.lower() for c in cols}) == len(cols)
    assert query(app, f"SELECT {quote('rate__2')}, Rate FROM fake.invoices") == [("2", "1")]
    rows = query(app, "SELECT _invoice_id, \"col'name__2\" FROM fake.invoices__rows")
    assert rows == [("1", "2")]
    assert query(app, f"SELECT count(*) FROM fake.{quote('invoices__../escape')}")[0][0] == 1


def _batch(app, payloads: list[dict]):
    from invoice_pipeline.batch import prepare_batch
    from invoice_pipeline.timeutil import utc_now

    src = FakeSource("fake", app.sources["fake"], payloads)
    return prepare_batch(src, [src.identify(p) for p in payloads], "run", utc_now())[0]


def test_cached_names_follow_another_writer_and_a_rollback(tmp_path: Path) -> None:
    app = make_app(tmp_path, {"fake": fake_config_block()})
    first, other = Warehouse(app.warehouse), Warehouse(app.warehouse)  # e.g. two processes
    with first.writer() as con:
        first.ensure_main(con)
        first.ensure_source(con, "fake")
        first.write_batch(con, _batch(app, [invoice(1)]))
    with other.writer() as con:  # adds a column and a child table the first writer has not seen
        other.write_batch(con, _batch(app, [invoice(2, Rate="a", extra_rows=[{"k": 1}])]))
    with first.writer() as con:  # "rate" must be named rate__2 (Rate is taken), not collide or be re-added
        first.write_batch(con, _batch(app, [invoice(3, rate="b", extra_rows=[{"k": 2}])]))
    assert query(app, 'SELECT _invoice_id, "Rate", "rate__2" FROM fake.invoices WHERE _invoice_id <> \'1\' ORDER BY 1') == [
        ("2", "a", None), ("3", None, "b")]
    assert query(app, "SELECT count(*) FROM fake.invoices__extra_rows")[0][0] == 2
    # a batch that fails after naming a new column rolls the column back; the next one re-creates it
    bad = _batch(app, [invoice(4, fresh="x")])
    bad.raw = bad.raw.drop_columns(["payload"])
    with first.writer() as con, pytest.raises(Exception):
        first.write_batch(con, bad)
    with first.writer() as con:
        first.write_batch(con, _batch(app, [invoice(4, fresh="y")]))
    assert query(app, 'SELECT "fresh" FROM fake.invoices WHERE _invoice_id = \'4\'') == [("y",)]
    assert query(app, "SELECT count(*) FROM fake._columns WHERE field_path = '.fresh'")[0][0] == 1


def test_mixed_batch_of_new_and_changed_invoices_replaces_only_the_changed(tmp_path: Path) -> None:
    app, _ = load(tmp_path, [invoice(1, lines=3), invoice(2, lines=2)])
    _, s = load(tmp_path, [invoice(2, updated="2025-02-01T00:00:00Z", lines=1), invoice(3, lines=2),
                           invoice(1, updated="2024-01-02T00:00:00Z", lines=5)])  # 1 is stale now
    assert (s.invoices_loaded, s.invoices_stale) == (2, 1)
    assert query(app, "SELECT _invoice_id, count(*) FROM fake.invoices__lines GROUP BY 1 ORDER BY 1") == [
        ("1", 3), ("2", 1), ("3", 2)]
    assert query(app, "SELECT invoice_id, count(*) FROM main.invoice_lines GROUP BY 1 ORDER BY 1") == [
        ("1", 3), ("2", 1), ("3", 2)]


def test_a_forked_child_can_write_after_its_parent_did(tmp_path: Path) -> None:
    import multiprocessing

    app, _ = load(tmp_path, [invoice(1)])  # nothing DuckDB-side may outlive the writer into a fork
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_load_in_child, args=(str(tmp_path),))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert query(app, "SELECT count(*) FROM fake.invoices")[0][0] == 2


def _load_in_child(tmp: str) -> None:
    load(Path(tmp), [invoice(2)])


def test_a_long_run_hands_the_writer_over_between_turns(tmp_path: Path) -> None:
    """Another writer gets the warehouse while a run is still loading (it waits one turn at most)."""
    import threading
    import time

    from invoice_pipeline.simulation import Knobs
    from invoice_pipeline.sources.oracle_occ.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=120, knobs=Knobs(latency=0.01, retry_after=0)) as sim:
        app = make_app(tmp_path, {"ora": {**sim.source_config(), "batch_size": 10, "prepare_processes": 0,
                                          "concurrency": 2}})
        app = app.model_copy(update={"warehouse": app.warehouse.model_copy(update={"writer_turn_seconds": 0.1})})
        wh = Warehouse(app.warehouse)
        done = threading.Event()
        other_writes: list[float] = []
        errors: list[BaseException] = []

        def other_writer() -> None:  # what another source's run does from another process
            try:
                while not done.is_set():
                    with wh.writer() as con:
                        con.execute("CREATE TABLE IF NOT EXISTS main.other (written_at DOUBLE)")
                        con.execute("INSERT INTO main.other VALUES (?)", [time.monotonic()])
                    other_writes.append(time.monotonic())
                    time.sleep(0.05)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        with wh.writer() as con:
            wh.ensure_main(con)
        thread = threading.Thread(target=other_writer)
        started = time.monotonic()
        thread.start()
        try:
            summary = run_source(app, "ora", warehouse=wh)
        finally:
            ended = time.monotonic()
            done.set()
            thread.join()
    assert not errors
    assert summary.invoices_loaded == 120 and summary.extra["writer_turns"] > 1
    during = [t for t in other_writes if started < t < ended]
    assert len(during) >= 2, "the other writer did not get turns while the run was loading"


def test_an_idle_writer_turn_releases_the_warehouse(tmp_path: Path) -> None:
    """A run waiting on a slow API between batches holds neither the lock nor the connection."""
    from filelock import FileLock, Timeout

    app = make_app(tmp_path, {"a": fake_config_block()})
    wh = Warehouse(app.warehouse)
    lock_path = str(wh.path) + ".lock"
    with wh.turns() as turns:
        with turns.connection() as con:
            con.execute("CREATE TABLE t (x INTEGER)")
        with pytest.raises(Timeout):  # right after a write, the turn goes on
            FileLock(lock_path, thread_local=False).acquire(timeout=0.2)
        time.sleep(turns.IDLE_SECONDS + 0.5)
        other = FileLock(lock_path, thread_local=False)
        other.acquire(timeout=0.5)  # idle: released
        other.release()
        with turns.connection() as con:  # the next batch simply starts a new turn
            con.execute("INSERT INTO t VALUES (1)")
        assert turns.turns == 2


def test_a_session_shares_one_connection_and_still_lets_others_in(tmp_path: Path) -> None:
    """Inside Warehouse.session() a whole run (every step's writer() and the batch turns) opens the file
    once; the shared connection still follows the turn rules, so an idle session holds nothing."""
    from filelock import FileLock

    app = make_app(tmp_path, {"fake": fake_config_block()})
    wh = Warehouse(app.warehouse)
    with wh.session():
        run_source(app, "fake", warehouse=wh, source=FakeSource("fake", app.sources["fake"], [invoice(1), invoice(2)]))
        with Warehouse(app.warehouse).writer() as con:  # another Warehouse object on the same file
            threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
            loaded = con.execute("SELECT count(*) FROM main.invoices").fetchone()[0]
        shared = wh.turns()
        assert shared.turns == 1, "the run's steps reopened the warehouse instead of sharing the session's connection"
        assert loaded == 2
        assert threads > 1, "a step after the batch writes ran single-threaded"
        time.sleep(shared._shared.IDLE_SECONDS + 0.5)
        other = FileLock(str(wh.path) + ".lock", thread_local=False)
        other.acquire(timeout=0.5)  # idle: released to other processes, as outside a session
        other.release()
    with wh.writer() as con:  # after the session, writers open their own connection again
        assert con.execute("SELECT count(*) FROM main.invoices").fetchone()[0] == 2
