"""Assets: one per configured source instance, the conformed model over all of them, the publish step."""


import dagster as dg

from invoice_pipeline.config import AppConfig, SourceConfig
from invoice_pipeline.conformed import CONFORMED_KEYS as TABLE_KEYS
from invoice_pipeline.conformed import CONFORMED_TABLES
from invoice_pipeline.defs.catalog import (ROW_COUNT, COLUMN_SCHEMA, conformed_catalog, conformed_definition_schema,
                                           counts_table, source_catalog)
from invoice_pipeline.defs.launch_config import SOURCE_RUN_CONFIG, backfill_window
from invoice_pipeline.defs.drift_check import drift_check_result, drift_check_spec, drift_metadata, registry_before
from invoice_pipeline.defs.keys import (AGING_KEY, CONFORMED_ASSET_KEYS, HISTORY_KEY, PUBLISHED_KEY, RUN_ID_TAG_PREFIX,
                                        WRITE_POOL, reconcile_asset_key, repoll_asset_key, source_asset_key)
from invoice_pipeline.defs.resources import PipelineResource
from invoice_pipeline.drift import detect_drift
from invoice_pipeline.defs.schedules import CONFORMED_CONDITION, PUBLISH_CONDITION
from invoice_pipeline.pipeline import RunSummary, run_source
from invoice_pipeline.publish import publish, refresh_conformed

# The aging snapshot is copied into the published file, so it is drawn upstream of publish; it is
# materialized daily, so publish must not wait for its first materialization (eager() would).
PUBLISH_AUTOMATION = PUBLISH_CONDITION.replace(
    "any_deps_missing",
    dg.AutomationCondition.any_deps_missing().ignore(dg.AssetSelection.assets(AGING_KEY))
    .with_label("any_deps_missing (the aging snapshot aside)"))


def summary_metadata(summary: RunSummary) -> dict:
    return {
        "source_type": summary.source_type,
        "mode": summary.mode,
        "run_id": summary.run_id,
        "window_start": summary.window_start.isoformat(),
        "window_end": summary.window_end.isoformat(),
        "invoices_extracted": dg.MetadataValue.int(summary.invoices_extracted),
        "invoices_loaded": dg.MetadataValue.int(summary.invoices_loaded),
        "invoices_stale_skipped": dg.MetadataValue.int(summary.invoices_stale),
        "quarantined": dg.MetadataValue.int(summary.quarantined),
        "pages": dg.MetadataValue.int(summary.pages),
        "api_calls": dg.MetadataValue.int(summary.api_calls),
        "retries": dg.MetadataValue.int(summary.retries),
        "duration_s": dg.MetadataValue.float(summary.duration_s),
        "rows_written": counts_table(summary.rows_written),
        "source_stats": dg.MetadataValue.json({k: v for k, v in summary.extra.items() if isinstance(v, int | float | str)}),
    }


def build_source_asset(name: str, config: SourceConfig, pool: str | None = WRITE_POOL) -> dg.AssetsDefinition:
    @dg.asset(
        key=source_asset_key(name),
        group_name=name,
        kinds={"duckdb", "python"},
        tags={"source_type": config.type},
        pool=pool,
        config_schema=SOURCE_RUN_CONFIG,
        check_specs=[drift_check_spec(name, config)],
        description=(
            f"Grain: one row per {config.type} invoice of source '{name}' (latest version), in schema "
            f"{name} with one child table per nested array and the raw payloads in {name}._raw_invoices; "
            "also merges this source's rows into the conformed main.* tables. Incremental: from the stored "
            "cursor minus the lookback to a bound frozen at run start; the cursor moves only on success."
        ),
    )
    def _source_asset(
        context: dg.AssetExecutionContext, pipeline: PipelineResource
    ) -> dg.MaterializeResult:
        # A backfill re-reads a past window; it never moves the cursor and never regresses newer rows.
        before = registry_before(pipeline.warehouse, name)
        summary = run_source(pipeline.app, name, warehouse=pipeline.warehouse, window=backfill_window(context.op_config))
        with pipeline.warehouse.writer() as con:  # schema drift; row count and columns for the catalog
            drift = detect_drift(con, name, summary.run_id, before, pipeline.app.sources[name].schema_contract)
            catalog = source_catalog(con, name)
        # The pipeline's run id (main._pipeline_runs, the rows' _run_id) as a tag of the Dagster run:
        # the UI's run list finds the Dagster run of a warehouse row by it (docs/OPERATIONS.md).
        context.instance.add_run_tags(context.run_id, {f"{RUN_ID_TAG_PREFIX}{name}": summary.run_id})
        return dg.MaterializeResult(metadata={**summary_metadata(summary), **catalog, **drift_metadata(drift)},
                                    check_results=[drift_check_result(name, drift)])

    return _source_asset


def build_conformed_asset(app: AppConfig, pool: str | None = WRITE_POOL) -> dg.AssetsDefinition:
    # Re-polls and deletion reconciliation also change main.*: publish follows them too.
    upstream = [k for n in app.sources for k in (source_asset_key(n), repoll_asset_key(n), reconcile_asset_key(n))]
    @dg.multi_asset(
        specs=[
            dg.AssetSpec(
                key, group_name="conformed", kinds={"duckdb"}, deps=upstream,
                automation_condition=CONFORMED_CONDITION,
                metadata={COLUMN_SCHEMA: conformed_definition_schema(table)},
                description=f"Grain: one row per {table[:-1].replace('_', ' ')} across every configured source "
                            f"(key {', '.join(TABLE_KEYS[table])}).",
            )
            for key, table in zip(CONFORMED_ASSET_KEYS, CONFORMED_TABLES, strict=True)
        ],
        pool=pool,
        can_subset=False,
    )
    def conformed_model(context: dg.AssetExecutionContext, pipeline: PipelineResource):
        """Counts the conformed rows per source; the rows themselves are merged by each source run. Rows of
        sources this config does not name are kept (another config file may load them): only
        `invoice-pipeline drop-source` removes a source."""
        counts = refresh_conformed(pipeline.warehouse, list(app.sources))
        with pipeline.warehouse.reader() as con:
            schemas = conformed_catalog(con)  # as stored, with the COMMENTs analysts see
        for key, table in zip(CONFORMED_ASSET_KEYS, CONFORMED_TABLES, strict=True):
            rows = sum(counts[table].values())
            yield dg.MaterializeResult(
                asset_key=key,
                metadata={"rows": dg.MetadataValue.int(rows), ROW_COUNT: dg.MetadataValue.int(rows),
                          COLUMN_SCHEMA: dg.MetadataValue.table_schema(schemas[table]),
                          "rows_by_source": counts_table(counts[table], key="source")},
            )

    return conformed_model


def build_publish_asset(pool: str | None = WRITE_POOL) -> dg.AssetsDefinition:
    @dg.asset(
        key=PUBLISHED_KEY,
        group_name="published",
        kinds={"duckdb", "parquet"},
        deps=[*CONFORMED_ASSET_KEYS, HISTORY_KEY, AGING_KEY],
        pool=pool,
        automation_condition=PUBLISH_AUTOMATION,
        description="Read-only DuckDB snapshot for analysts/BI and the Parquet lake; replaced only after the "
                    "blocking checks on the conformed tables passed (write-audit-publish).",
    )
    def published_warehouse(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
        result = publish(pipeline.app, pipeline.warehouse)
        metadata = {k: counts_table(v) if isinstance(v, dict) else v for k, v in result.items()}
        if isinstance(result.get("snapshot_rows"), dict) and "invoices" in result["snapshot_rows"]:
            metadata[ROW_COUNT] = dg.MetadataValue.int(result["snapshot_rows"]["invoices"])  # the snapshot's invoices
        return dg.MaterializeResult(metadata=metadata)

    return published_warehouse
