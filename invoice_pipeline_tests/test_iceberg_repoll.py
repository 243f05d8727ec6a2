"""Re-poll of open invoices with `warehouse.backend: iceberg` (lifecycle/repoll.py, iceberg/repoll.py,
docs/ICEBERG.md): payments that leave an invoice's modification time alone reach the Iceberg tables,
the cursor stays, the run row says repoll, and a re-poll with nothing changed adds nothing."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from .iceberg_support import duplicates, iceberg_app, ingest, published

from invoice_pipeline import lifecycle  # noqa: E402
from invoice_pipeline.iceberg.publish import publish  # noqa: E402
from invoice_pipeline.pipeline import run_source  # noqa: E402


def _balances(app, source: str) -> dict[str, Decimal]:
    rows = ingest(app, "main", "invoices")
    return {i: b for s, i, b in zip(rows.column("source_name").to_pylist(), rows.column("invoice_id").to_pylist(),
                                    rows.column("balance_due").to_pylist(), strict=True) if s == source}


def _cursor(app, source: str):
    rows = ingest(app, "main", "_pipeline_cursors").to_pylist()
    return [r["cursor_at"] for r in rows if r["source_name"] == source]


def _truth(app, source: str, ids: list[str]) -> dict[str, Decimal]:
    """What the simulator says the balance is now (read through the client, mapped like a load)."""
    from invoice_pipeline.pipeline import build_source

    src = build_source(app, source)
    try:
        return {r.invoice_id: src.to_conformed(r.payload).invoice["balance_due"]
                for batch in src.fetch_by_ids(ids) for r in batch}
    finally:
        src.close()


def _check_repoll(app, source: str, paid: list[str], detail_calls: int | None = None) -> None:
    """detail_calls: what the re-polls should cost in detail reads (Oracle: only the changed invoices)."""
    before = _balances(app, source)
    cursor = _cursor(app, source)
    history_before = ingest(app, "main", "invoice_history").num_rows
    raw_before = ingest(app, source, "_raw_invoices").num_rows
    truth = _truth(app, source, paid)
    assert paid and all(truth[i] != before[i] for i in paid)  # the payments did move the balances
    assert run_source(app, source).invoices_loaded == 0  # the modification window cannot see them
    assert _balances(app, source) == before
    cursor = _cursor(app, source)

    result = lifecycle.repoll_open_invoices(app, source)
    assert result.summary is not None and result.summary.status == "success"
    assert result.changed == len(paid) and result.open_invoices > len(paid)
    if detail_calls is not None:
        assert result.detail_calls == detail_calls
    after = _balances(app, source)
    assert {i: after[i] for i in paid} == truth  # exact decimals, in the Iceberg table
    assert {i: b for i, b in after.items() if i not in paid} == {i: b for i, b in before.items() if i not in paid}
    assert _cursor(app, source) == cursor  # never moved by a re-poll
    runs = [r for r in ingest(app, "main", "_pipeline_runs").to_pylist() if r["run_id"] == result.summary.run_id]
    assert [(r["mode"], r["status"], r["source_name"]) for r in runs] == [("repoll", "success", source)]
    history = ingest(app, "main", "invoice_history")
    assert history.num_rows == history_before + len(paid)  # one new version per payment
    current = [r for r in history.to_pylist() if r["valid_to"] is None and r["invoice_id"] in paid
               and r["source_name"] == source]
    assert {r["invoice_id"]: r["balance_due"] for r in current} == truth
    assert all(r["run_id"] == result.summary.run_id for r in current)
    assert ingest(app, source, "_raw_invoices").num_rows == raw_before + len(paid)  # the new payloads, once
    assert duplicates(ingest(app, "main", "invoices"), ["source_name", "invoice_id"]) == 0

    # Nothing changed since: a second re-poll adds no version, no payload, no row; balances stay.
    again = lifecycle.repoll_open_invoices(app, source)
    assert again.changed == 0 and again.summary is not None and again.summary.status == "success"
    if detail_calls is not None:
        assert again.detail_calls == 0  # every listed invoice equals its stored version
    assert ingest(app, "main", "invoice_history").num_rows == history_before + len(paid)
    assert ingest(app, source, "_raw_invoices").num_rows == raw_before + len(paid)
    assert _balances(app, source) == after and _cursor(app, source) == cursor
    assert duplicates(ingest(app, "main", "invoices"), ["source_name", "invoice_id"]) == 0

    # The audit accepts what the re-polls wrote, and readers of `main` see the payments after publish.
    outcome = publish(app)
    assert outcome.published, outcome.failures
    main = published(app, "main", "invoices").to_pylist()
    assert {r["invoice_id"]: r["balance_due"] for r in main if r["invoice_id"] in paid and r["source_name"] == source} \
        == truth


def test_oracle_repoll_on_iceberg_reads_details_only_of_paid_invoices(tmp_path: Path) -> None:
    """Oracle's own re-poll (list pages, compared with the stored version read from Iceberg)."""
    from invoice_pipeline.sources.oracle_occ.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=40) as sim:
        app, _ = iceberg_app(tmp_path, {"occ": sim.source_config()})
        run_source(app, "occ")
        paid = sim.mutate(payments=3, seed=5)["payments"]
        _check_repoll(app, "occ", paid, detail_calls=len(paid))


def test_softwareone_repoll_on_iceberg_reads_open_invoices_by_id(tmp_path: Path) -> None:
    """A client without a `repoll` of its own: fetch_by_ids of every open invoice."""
    from invoice_pipeline.sources.softwareone.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=30) as sim:
        app, _ = iceberg_app(tmp_path, {"swo": sim.source_config()})
        run_source(app, "swo")
        paid = sim.mutate(payments=3, seed=2)["payments"]
        _check_repoll(app, "swo", paid)


def test_repoll_asset_of_the_iceberg_graph_skips_what_its_job_run_loaded_and_its_own_job_converges(
        tmp_path: Path) -> None:
    """defs/iceberg_assets.py: the re-poll runs in the whole job after the load (reading nothing the load
    just wrote), and `<source>_repoll` on its own brings the payments to `ingest`, `main` only after publish."""
    import dagster as dg

    from invoice_pipeline.defs import build_definitions
    from invoice_pipeline.defs.keys import ALL_ASSETS_JOB, repoll_asset_key
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

    def repoll_metadata(result) -> dict:
        (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == repoll_asset_key("agv")]
        return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}

    with SIMULATOR_CLASS(size=20) as sim:
        app, config = iceberg_app(tmp_path, {"agv": sim.source_config()})
        defs = build_definitions(app, str(config))
        instance = dg.DagsterInstance.ephemeral()
        whole = defs.resolve_job_def(ALL_ASSETS_JOB).execute_in_process(instance=instance, raise_on_error=False)
        assert whole.success, [e.message for e in whole.all_events if e.is_failure]
        meta = repoll_metadata(whole)
        assert meta["open_invoices"] == 0 and meta["skipped_just_loaded"] > 0 and meta["api_calls"] == 0

        paid = sim.mutate(payments=3, seed=2)["payments"]
        truth = _truth(app, "agv", paid)
        before_main = {r["invoice_id"]: r["balance_due"] for r in published(app, "main", "invoices").to_pylist()}
        assert paid and all(truth[i] != before_main[i] for i in paid)
        alone = defs.resolve_job_def("agv_repoll").execute_in_process(instance=instance, raise_on_error=False)
        assert alone.success, [e.message for e in alone.all_events if e.is_failure]
        meta = repoll_metadata(alone)
        assert meta["changed"] == 3 and meta["skipped_just_loaded"] == 0 and meta["open_invoices"] > 3
        assert {i: _balances(app, "agv")[i] for i in paid} == truth  # on `ingest`
        assert {r["invoice_id"]: r["balance_due"] for r in published(app, "main", "invoices").to_pylist()} == before_main
        outcome = publish(app)
        assert outcome.published, outcome.failures
        assert {r["invoice_id"]: r["balance_due"] for r in published(app, "main", "invoices").to_pylist()
                if r["invoice_id"] in paid} == truth


def test_open_invoice_selection_on_iceberg_is_the_duckdb_rule(tmp_path: Path) -> None:
    """Balance due <> 0, not void, within the horizon; what the job run's own load wrote is skipped."""
    from datetime import timedelta

    from .fake_source import fake_config_block
    from .test_lifecycle import TODAY, ServerSource, open_inv

    app, _ = iceberg_app(tmp_path, {"fake": fake_config_block()})
    server = {"1": open_inv(1), "2": open_inv(2), "3": open_inv(3, balance="0"), "4": open_inv(4, void=True),
              "5": open_inv(5, due=(TODAY - timedelta(days=400)).isoformat())}
    run_source(app, "fake", source=ServerSource("fake", app.sources["fake"], server))
    server["1"] = {**server["1"], "balance": "2.22"}  # paid in part, same "updated"

    src = ServerSource("fake", app.sources["fake"], server)
    result = lifecycle.repoll_open_invoices(app, "fake", source=src, horizon=timedelta(days=365))
    assert src.fetched == ["1", "2"] and result.open_invoices == 2 and result.changed == 1  # 5 is too old
    assert _balances(app, "fake")["1"] == Decimal("2.22")

    # A wider horizon reaches 5; what the re-poll named as after_run_id wrote (1, 2) is not read again.
    src = ServerSource("fake", app.sources["fake"], server)
    later = lifecycle.repoll_open_invoices(app, "fake", source=src, horizon=timedelta(days=1000),
                                           after_run_id=result.summary.run_id)
    assert src.fetched == ["5"] and later.skipped_just_loaded == 2 and later.changed == 0


def test_cli_run_on_iceberg_repolls_and_publishes_silent_payments(tmp_path: Path) -> None:
    """`invoice-pipeline run` (a subprocess) selects the re-poll with Iceberg as with DuckDB (runner.py):
    payments that leave the modification time alone reach `main` with the next run."""
    from .conftest import cli_in
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=15) as sim:
        app, config = iceberg_app(tmp_path, {"agv": sim.source_config()})
        (tmp_path / "c.yaml").write_text(config.read_text())
        done = cli_in(tmp_path, "run")
        assert done.returncode == 0, done.stdout + done.stderr
        paid = sim.mutate(payments=3, seed=4)["payments"]
        truth = _truth(app, "agv", paid)
        assert paid and all(_balances(app, "agv")[i] != truth[i] for i in paid)
        done = cli_in(tmp_path, "run")
        assert done.returncode == 0, done.stdout + done.stderr
    main = {r["invoice_id"]: r["balance_due"] for r in published(app, "main", "invoices").to_pylist()}
    assert {i: main[i] for i in paid} == truth and len(main) == 15
    modes = [r["mode"] for r in ingest(app, "main", "_pipeline_runs").to_pylist()]
    # the first run's re-poll had nothing to read (every open invoice just loaded by that run): no load
    assert modes.count("repoll") == 1 and modes.count("incremental") == 2
