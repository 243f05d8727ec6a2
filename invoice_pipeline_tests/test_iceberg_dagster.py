"""The Dagster code location with `warehouse.backend: iceberg` (defs/iceberg_assets.py, docs/ICEBERG.md):
the whole job materialized in process against simulators; a failed blocking check leaves `main` unmoved."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import pyarrow as pa

from .iceberg_support import duplicates, iceberg_app, ingest, published

from invoice_pipeline.iceberg.publish import published_snapshots, read_published  # noqa: E402

from invoice_pipeline.defs import build_definitions  # noqa: E402
from invoice_pipeline.defs.keys import (ALL_ASSETS_JOB, PUBLISHED_KEY, WRITE_POOL,  # noqa: E402
                                        AGING_KEY, HISTORY_KEY, reconcile_asset_key, repoll_asset_key)


def _main_snapshots(app) -> dict[str, int | None]:
    from invoice_pipeline.iceberg.catalog import CONFORMED, open_catalog

    catalog = open_catalog(app.warehouse.iceberg)
    out = {}
    for name in CONFORMED:
        table = catalog.load_table(("main", name))
        ref = table.metadata.refs.get("main")
        out[name] = ref.snapshot_id if ref else None
    return out


def _checks(result) -> dict[str, bool]:
    return {e.event_specific_data.check_name: e.event_specific_data.passed
            for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def _add_duplicate_invoice(app) -> str:
    """A second row for an invoice on `ingest`, as a buggy writer would leave it: unique_invoices must fail."""
    from invoice_pipeline.iceberg.catalog import INGEST, open_catalog

    table = open_catalog(app.warehouse.iceberg).load_table(("main", "invoices"))
    row = table.scan(limit=1).use_ref(INGEST).to_arrow()
    table.append(row, branch=INGEST)
    return row.column("invoice_id")[0].as_py()


def test_graph_has_no_pool_and_the_lifecycle_assets(tmp_path: Path) -> None:
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=5) as sim:
        app, config = iceberg_app(tmp_path, {"agv": sim.source_config()})
    defs = build_definitions(app, str(config))  # write_pool defaults to the DuckDB pool: ignored here
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = set(graph.get_all_asset_keys())
    assert graph.get(reconcile_asset_key("agv")).parent_keys == {dg.AssetKey(["agv", "invoices"])}  # test_iceberg_deletions.py
    assert defs.resolve_job_def("agv_deletion_reconciliation") is not None
    assert defs.resolve_schedule_def("agv_deletion_reconciliation_schedule").cron_schedule == "0 3 * * *"
    assert repoll_asset_key("agv") in keys and graph.get(repoll_asset_key("agv")).parent_keys == {
        dg.AssetKey(["agv", "invoices"])}  # the re-poll works on Iceberg (test_iceberg_repoll.py)
    assert defs.resolve_job_def("agv_repoll") is not None
    assert PUBLISHED_KEY in keys and HISTORY_KEY in keys  # the history is written by the source runs
    assert graph.get(AGING_KEY).parent_keys == {PUBLISHED_KEY}  # aged from the published history
    assert defs.resolve_schedule_def("ar_aging_snapshot_daily_schedule") is not None
    assert all(graph.get(k).pools in (None, set()) and WRITE_POOL not in (graph.get(k).pools or set()) for k in keys)
    assert defs.resolve_job_def("agv_incremental") is not None
    assert "iceberg" in graph.get(PUBLISHED_KEY).kinds


def test_job_loads_audits_and_publishes_iceberg_main_and_a_failed_blocking_check_leaves_main(tmp_path: Path) -> None:
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS as Agvance
    from invoice_pipeline.sources.softwareone.simulator import SIMULATOR_CLASS as SoftwareOne

    with Agvance(size=30) as agv, SoftwareOne(size=20) as swo:
        app, config = iceberg_app(tmp_path, {"agv": agv.source_config(), "swo": swo.source_config()})
        defs = build_definitions(app, str(config))
        job = defs.resolve_job_def(ALL_ASSETS_JOB)
        instance = dg.DagsterInstance.ephemeral()
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        checks = _checks(result)
        assert checks["children_match_invoice_version"] and checks["unique_invoices"] and checks["sources_fresh"]
        assert all(checks.values()), checks
        mats = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        assert {"agv/invoices", "swo/invoices", "main/invoices", "main/invoice_history", "published/warehouse"} <= mats
        assert checks["history_contiguous"] and checks["history_matches_invoices"]
        assert published(app, "main", "invoice_history").num_rows == 50
        assert "main/ar_aging_snapshot" in mats

        main = published(app, "main", "invoices")  # what every reader sees: main
        by_source = {s: sorted(i for s2, i in zip(main.column("source_name").to_pylist(),
                                                  main.column("invoice_id").to_pylist()) if s2 == s)
                     for s in ("agv", "swo")}
        assert len(by_source["agv"]) == 30 and len(by_source["swo"]) == 20
        assert duplicates(main, ["source_name", "invoice_id"]) == 0
        assert main.num_rows == ingest(app, "main", "invoices").num_rows == 50
        assert published(app, "main", "invoice_lines").num_rows == ingest(app, "main", "invoice_lines").num_rows > 0
        before = _main_snapshots(app)
        seq, manifest = published_snapshots(app)  # the set the audit saw, recorded in one commit
        assert seq == 1 and {f"main.{t}": s for t, s in before.items()}.items() <= manifest.items()
        assert "agv._raw_invoices" in manifest and "swo.invoices" in manifest

        # new versions land on ingest, then a bad row makes a blocking check fail: nothing is published
        time.sleep(1.1)
        touched = agv.mutate(updates=3)
        bad = _add_duplicate_invoice(app)
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        checks = _checks(result)
        assert checks["unique_invoices"] is False
        failed_meta = next(e.event_specific_data.metadata for e in result.all_events
                           if e.event_type_value == "ASSET_CHECK_EVALUATION"
                           and e.event_specific_data.check_name == "unique_invoices")
        assert bad in str(failed_meta["first_offenders"].value)
        assert PUBLISHED_KEY not in {e.asset_key for e in result.get_asset_materialization_events()}
        assert _main_snapshots(app) == before  # main unmoved
        assert published_snapshots(app) == (seq, manifest)  # and no publish recorded
        assert published(app, "main", "invoices").num_rows == 50  # readers still see the last audited data
        assert ingest(app, "main", "invoices").num_rows == 51
        updated = set(touched["updated"])
        assert updated and ingest(app, "agv", "_raw_invoices").num_rows > published(app, "agv", "_raw_invoices").num_rows

        # publish on its own re-audits what it pins: refused too, with the rule and the invoice named
        alone = job.execute_in_process(instance=instance, asset_selection=[PUBLISHED_KEY], raise_on_error=False)
        assert not alone.success
        failure = next(e for e in alone.all_events if e.is_step_failure).step_failure_data.error
        assert "unique_invoices" in str(failure.message) + str(failure.cause and failure.cause.message)
        assert _main_snapshots(app) == before


def test_publish_never_takes_main_back_to_an_older_audited_snapshot(tmp_path: Path) -> None:
    """A slow publish that pinned older snapshots, finishing after a newer publish, leaves main where it is."""
    from invoice_pipeline.iceberg import publish as publish_module
    from invoice_pipeline.pipeline import run_source
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=10) as sim:
        app, _ = iceberg_app(tmp_path, {"agv": sim.source_config()})
        run_source(app, "agv")
        old_tables, old_pins = publish_module.pin(app)
        time.sleep(1.1)
        sim.mutate(updates=2)
        run_source(app, "agv")
        assert publish_module.publish(app).published
        newer = _main_snapshots(app)
        assert newer["invoices"] != old_pins["invoices"]
        # the slow publish: its pin is older than main now
        real_pin = publish_module.pin
        try:
            publish_module.pin = lambda _app: (old_tables, old_pins)
            assert publish_module.publish(app).published
        finally:
            publish_module.pin = real_pin
        assert _main_snapshots(app) == newer
        # the manifest keeps the newer set: its newest publish_seq never goes back
        seq, manifest = published_snapshots(app)
        assert seq == 1 and manifest["main.invoices"] == newer["invoices"]
        snap = published_snapshots(app)[1]
        for table in ("invoices", "invoice_lines"):  # readers pinned by the manifest read what main shows
            assert read_published(app, "main", table, snap).sort_by("invoice_id").equals(
                published(app, "main", table).sort_by("invoice_id"))
        assert isinstance(read_published(app, "agv", "_raw_invoices"), pa.Table)


def test_cli_run_goes_through_dagster_and_a_failed_blocking_check_exits_1_with_main_unmoved(tmp_path: Path) -> None:
    """`invoice-pipeline run` with the Iceberg backend runs the Dagster job (recorded in DAGSTER_HOME);
    a blocking check that fails names itself, exits 1 and publishes nothing."""
    from .conftest import cli_in
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=15) as sim:
        app, config = iceberg_app(tmp_path, {"agv": sim.source_config()})
        (tmp_path / "c.yaml").write_text(config.read_text())
        done = cli_in(tmp_path, "run")
        assert done.returncode == 0, done.stdout + done.stderr
        assert published(app, "main", "invoices").num_rows == 15
        before = _main_snapshots(app)
        _add_duplicate_invoice(app)
        done = cli_in(tmp_path, "run")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "blocking checks failed, nothing published: unique_invoices" in done.stdout
    assert _main_snapshots(app) == before
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
        assert len(instance.get_run_records()) == 2  # both runs in the instance the UI shows
