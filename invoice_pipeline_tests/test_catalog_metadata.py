"""Catalog metadata after a real run against a simulator: row counts, column schemas with the
warehouse's comments, per-table figures as tables, the pipeline's run id as a Dagster run tag, and
the aging snapshot drawn upstream of the publish without holding it back."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from invoice_pipeline.conformed_docs import conformed_columns
from invoice_pipeline.conformed import CONFORMED_TABLES
from invoice_pipeline.defs import build_definitions
from invoice_pipeline.defs.keys import AGING_KEY, CONFORMED_ASSET_KEYS, RUN_ID_TAG_PREFIX
from invoice_pipeline.defs.catalog import COLUMN_SCHEMA, ROW_COUNT
from invoice_pipeline.runner import run_pipeline
from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

from .conftest import write_app_config
from .fake_source import fake_config_block

PUBLISHED = dg.AssetKey(["published", "warehouse"])


def _latest(instance: dg.DagsterInstance, key: dg.AssetKey) -> tuple[dict, str]:
    event = instance.get_latest_materialization_event(key)
    assert event is not None, key
    return event.asset_materialization.metadata, event.run_id


def test_every_asset_has_row_count_schema_and_tables(in_tmp: Path) -> None:
    with SIMULATOR_CLASS(size=25) as sim:
        app, path = write_app_config(in_tmp, {"agv": sim.source_config()})
        report = run_pipeline(app, str(path))
    assert report.success, report.failures
    assert isinstance(report.sources["agv"]["rows_written"], dict)  # the CLI's report still gets plain counts
    with dg.DagsterInstance.get() as instance:
        meta, run_id = _latest(instance, dg.AssetKey(["agv", "invoices"]))
        loaded = meta["invoices_loaded"].value
        assert meta[ROW_COUNT].value == loaded > 0
        columns = {c.name: c for c in meta[COLUMN_SCHEMA].schema.columns}
        assert columns["_run_id"].description.startswith("The pipeline run")
        described = [c for c in columns.values() if (c.description or "").startswith("JSON path ")]
        assert len(described) >= 5, columns
        assert isinstance(meta["rows_written"], dg.TableMetadataValue)
        assert {r.data["table"] for r in meta["rows_written"].records} >= {"invoices"}
        tags = instance.get_run_by_id(run_id).tags
        assert tags[f"{RUN_ID_TAG_PREFIX}agv"] == meta["run_id"].value  # one run, findable by either id

        for key, table in zip(CONFORMED_ASSET_KEYS, CONFORMED_TABLES, strict=True):
            meta, _ = _latest(instance, key)
            assert isinstance(meta[ROW_COUNT].value, int)
            schema = {c.name: c.description for c in meta[COLUMN_SCHEMA].schema.columns}
            assert schema == {c: doc for c, (_, doc) in conformed_columns()[table].items()} | {
                c: d for c, d in schema.items() if c not in CONFORMED_TABLES[table]}
            assert isinstance(meta["rows_by_source"], dg.TableMetadataValue)
        meta, _ = _latest(instance, dg.AssetKey(["main", "invoices"]))
        assert meta[ROW_COUNT].value == loaded

        meta, _ = _latest(instance, dg.AssetKey(["main", "invoice_history"]))
        assert meta[ROW_COUNT].value == meta["versions"].value >= loaded

        meta, _ = _latest(instance, PUBLISHED)
        assert meta[ROW_COUNT].value == loaded
        assert isinstance(meta["snapshot_rows"], dg.TableMetadataValue)


def test_aging_snapshot_is_upstream_of_publish_but_never_holds_it_back(in_tmp: Path) -> None:
    app, _ = write_app_config(in_tmp, {"a": fake_config_block()})
    defs = build_definitions(app)
    publish_deps = {dep.asset_key for spec in defs.resolve_assets_def(PUBLISHED).specs for dep in spec.deps}
    assert AGING_KEY in publish_deps  # publish copies main.ar_aging_snapshot into the snapshot
    spec = next(iter(defs.resolve_assets_def(CONFORMED_ASSET_KEYS[0]).specs))
    assert spec.metadata[COLUMN_SCHEMA].columns[0].description  # the catalog shows columns before any run
    with dg.instance_for_test() as instance:
        cursor = dg.evaluate_automation_conditions(defs=defs, instance=instance).cursor  # a first tick
        for key in publish_deps - {AGING_KEY}:  # the daily aging snapshot never ran yet
            instance.report_runless_asset_event(dg.AssetMaterialization(key))
        for checks in defs.asset_checks or []:
            for check in checks.check_specs:
                instance.report_runless_asset_event(dg.AssetCheckEvaluation(
                    asset_key=check.asset_key, check_name=check.name, passed=True))
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        requested = {r.key for r in result.results if r.true_subset.size > 0}
        assert PUBLISHED in requested
