"""The code location with `warehouse.backend: iceberg` (docs/ICEBERG.md, "Dagster"): the same asset keys,
job and schedule names as the DuckDB graph, over Iceberg tables.

- `<source>/invoices`: the source run into Iceberg (pipeline.run_source takes the Iceberg path); it
  commits to the `ingest` branch of every table;
- `main/*` (conformed): counts the rows of the pinned `ingest` snapshots per source (the rows
  themselves are merged by each source run, as with DuckDB);
- the audit checks on `main/invoices`: every rule of audit.py plus `children_match_invoice_version`,
  over the pinned `ingest` snapshots (DuckDB over Arrow); the blocking ones stop publish;
- `published/warehouse`: iceberg/publish.py, which pins `ingest` again, audits that pin and only
  then fast-forwards `main`: writers on other machines may have committed since the checks ran,
  and `main` must never show anything no audit has seen.

`main/invoice_history` is written by each source run too (iceberg/history.py); its rules
(history_contiguous, history_matches_invoices) are blocking checks on `main/invoices` here.
`main/ar_aging_snapshot` (iceberg/aging.py) is computed from the published history, so it sits
downstream of publish (with DuckDB it is upstream: copied into the published file); daily job and
schedule as with DuckDB.
`<source>/open_invoices_repoll`: lifecycle/repoll.py over the Iceberg tables (the open invoices read
from `main.invoices` on `ingest`, the re-read invoices merged like a run's, the cursor left alone);
same automation, job and schedule as with DuckDB; the conformed counts, checks and publish follow it.
`<source>/deletion_reconciliation`: lifecycle/deletions.py over the Iceberg tables (stored ids from
`main.invoices` on `ingest`, marks and deletion versions committed there, reappeared invoices merged
like a run's); same config, job and schedule as with DuckDB (reconcile_schedule "always": part of the
source's job, defs/schedules.py).
Left out of this graph (it reads and writes the DuckDB file): the schema drift check.
No asset takes the `duckdb_write` pool: concurrent commits are resolved by Iceberg's optimistic
commits (iceberg/merge.py), not by one run at a time.
"""


import logging
import os

import dagster as dg
import duckdb

from invoice_pipeline.config import AppConfig, SourceConfig
from invoice_pipeline.conformed import CONFORMED_KEYS as TABLE_KEYS
from invoice_pipeline.conformed import CONFORMED_TABLES
from invoice_pipeline.defs.alerts import build_alert_sensors
from invoice_pipeline.defs.assets import summary_metadata
from invoice_pipeline.defs.catalog import COLUMN_SCHEMA, ROW_COUNT, conformed_definition_schema, counts_table
from invoice_pipeline.defs.keys import (AGING_JOB, AGING_KEY, ALL_ASSETS_JOB, CONFORMED_ASSET_KEYS, HISTORY_KEY, INVOICES_KEY, NO_QUARANTINE_CHECK,
                                        PUBLISHED_KEY, RUN_ID_TAG_PREFIX, SOURCES_FRESH_CHECK, lifecycle_job_name,
                                        reconcile_asset_key, repoll_asset_key, source_asset_key, schedule_name,
                                        source_job_name)
from invoice_pipeline.defs.launch_config import SOURCE_RUN_CONFIG, backfill_window
from invoice_pipeline.defs.lifecycle import (AGING_CRON, LIFECYCLE_CONDITION, AgingSnapshotConfig, ReconcileConfig,
                                             as_dagster_metadata, load_in_this_run, repoll_wording)
from invoice_pipeline.defs.resources import PipelineResource
from invoice_pipeline.defs.schedules import (CONFORMED_CONDITION, PUBLISH_CONDITION, automation_sensor, build_schedules,
                                             log_run_failures)
from invoice_pipeline.iceberg.catalog import HISTORY
from invoice_pipeline.iceberg.publish import ALL_RULES, audit_rules, pin, publish
from invoice_pipeline.audit import AuditRule, stale_sources
from invoice_pipeline.lifecycle import reconcile_deletions, repoll_open_invoices
from invoice_pipeline.pipeline import run_source
from invoice_pipeline.testpoints import pause_point
from invoice_pipeline.timeutil import utc_now

log = logging.getLogger("invoice_pipeline.iceberg")

# What the DuckDB graph has and this one leaves out (docs/ICEBERG.md, "What is DuckDB-only").
DUCKDB_ONLY = ("the schema_drift check",)

# The executor of the jobs: multiprocess by default (source steps load side by side: no writer lock);
# INVOICE_PIPELINE_EXECUTOR=k8s or celery on a cluster (deploy/iceberg/run_config_*.yaml), in_process for one process.
EXECUTOR_ENV = "INVOICE_PIPELINE_EXECUTOR"


def build_iceberg_source_asset(name: str, config: SourceConfig) -> dg.AssetsDefinition:
    @dg.asset(
        key=source_asset_key(name),
        group_name=name,
        kinds={"iceberg", "python"},
        tags={"source_type": config.type},
        config_schema=SOURCE_RUN_CONFIG,
        description=(
            f"Grain: one row per {config.type} invoice of source '{name}' (latest version), in the Iceberg "
            f"namespace {name} with one table per nested array and the raw payloads in {name}._raw_invoices; "
            "also merges this source's rows into the conformed main.* tables. Writes the `ingest` branch: "
            "readers of `main` see it only after publish. Incremental from the stored cursor minus the "
            "lookback; the cursor moves only on success."
        ),
    )
    def _source_asset(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
        summary = run_source(pipeline.app, name, window=backfill_window(context.op_config))
        context.instance.add_run_tags(context.run_id, {f"{RUN_ID_TAG_PREFIX}{name}": summary.run_id})
        return dg.MaterializeResult(metadata=summary_metadata(summary))

    return _source_asset


def build_iceberg_repoll_asset(name: str, config: SourceConfig) -> dg.AssetsDefinition:
    """The DuckDB graph's re-poll asset (defs/lifecycle.py) over Iceberg: same key, automation and metadata."""
    horizon, when = repoll_wording(config)

    @dg.asset(
        key=repoll_asset_key(name),
        group_name=name,
        kinds={"iceberg", "python"},
        tags={"source_type": config.type},
        deps=[source_asset_key(name)],
        automation_condition=None if config.repoll_schedule else LIFECYCLE_CONDITION,
        description=(
            f"Re-reads the invoices of '{name}' still open in the Iceberg main.invoices (`ingest` branch; balance "
            f"due <> 0, not void, not deleted{horizon}) with the API's cheapest read of specific invoices, so "
            f"payments that do not move the modification time converge. Runs {when}; never moves the cursor; "
            "writes the `ingest` branch (readers of `main` see it after publish). In a job run that also loads "
            "the source, the invoices that load just wrote are not read again (skipped_just_loaded), nor, when "
            "that load compared every listed balance (CRM.COM; Oracle list-only), any other."
        ),
    )
    def _repoll(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
        after_run_id, compared = load_in_this_run(context, name)
        result = repoll_open_invoices(pipeline.app, name, after_run_id=after_run_id, load_compared_all=compared)
        return dg.MaterializeResult(metadata=as_dagster_metadata(result.as_metadata()))

    return _repoll


def build_iceberg_reconcile_asset(name: str, config: SourceConfig) -> dg.AssetsDefinition:
    """The DuckDB graph's deletion reconciliation asset (defs/lifecycle.py) over Iceberg: same key, config, metadata."""

    @dg.asset(
        key=reconcile_asset_key(name),
        group_name=name,
        kinds={"iceberg", "python"},
        tags={"source_type": config.type},
        deps=[source_asset_key(name)],
        description=(
            f"Compares the invoice ids '{name}' lists now with the Iceberg main.invoices (`ingest` branch); an "
            "invoice gone from the source (confirmed by a direct read) is marked is_deleted with "
            "deleted_detected_at, never erased, and gets a deleted version in main.invoice_history; a deleted "
            "invoice found again is reloaded (un-deleted). Refuses to mark more than reconcile_max_deleted_share "
            f"({config.reconcile_max_deleted_share:.0%}) at once. Cron '{config.reconcile_schedule}'. Writes the "
            "`ingest` branch (readers of `main` see it after publish)."
        ),
    )
    def _reconcile(context: dg.AssetExecutionContext, config: ReconcileConfig,
                   pipeline: PipelineResource) -> dg.MaterializeResult:
        result = reconcile_deletions(pipeline.app, name, allow_mass_deletion=config.allow_mass_deletion)
        return dg.MaterializeResult(metadata=as_dagster_metadata(result.as_metadata()))

    return _reconcile


def _rows_by_source(app: AppConfig) -> tuple[dict[str, dict[str, int]], dict[str, int | None]]:
    """table -> {source: rows} on the pinned `ingest` snapshots, and those snapshot ids."""
    tables, pinned = pin(app)
    counts: dict[str, dict[str, int]] = {}
    for table in (*CONFORMED_TABLES, HISTORY):
        snapshot = pinned[table]
        rows = (tables[table].scan(snapshot_id=snapshot, selected_fields=("source_name",)).to_arrow()
                if snapshot is not None else None)
        by_source = dict(duckdb.sql("SELECT source_name, count(*) FROM rows GROUP BY 1 ORDER BY 1").fetchall()) \
            if rows is not None else {}
        counts[table] = by_source
    return counts, {t: pinned[t] for t in (*CONFORMED_TABLES, HISTORY)}


def _writers(app: AppConfig) -> list[dg.AssetKey]:
    """The assets that write the conformed tables and the history: each source's run, re-poll and reconciliation."""
    return [k for n in app.sources for k in (source_asset_key(n), repoll_asset_key(n), reconcile_asset_key(n))]


def build_iceberg_conformed_asset(app: AppConfig) -> dg.AssetsDefinition:
    @dg.multi_asset(
        specs=[
            dg.AssetSpec(
                key, group_name="conformed", kinds={"iceberg"}, deps=_writers(app),
                automation_condition=CONFORMED_CONDITION,
                metadata={COLUMN_SCHEMA: conformed_definition_schema(table)},
                description=f"Grain: one row per {table[:-1].replace('_', ' ')} across every configured source "
                            f"(key {', '.join(TABLE_KEYS[table])}); Iceberg table main.{table}, partitioned by source.",
            )
            for key, table in zip(CONFORMED_ASSET_KEYS, CONFORMED_TABLES, strict=True)
        ] + [dg.AssetSpec(HISTORY_KEY, group_name="conformed", kinds={"iceberg"},
                          deps=_writers(app), automation_condition=CONFORMED_CONDITION,
                          description="Grain: one row per observed version of an invoice (source_name, invoice_id, "
                                      "valid_from), valid_to exclusive, NULL = current; written by each source run "
                                      "(Iceberg table main.invoice_history, partitioned by source).")],
        can_subset=False,
    )
    def conformed_model(context: dg.AssetExecutionContext, pipeline: PipelineResource):
        """Counts the conformed rows per source on `ingest` (merged there by each source run)."""
        counts, snapshots = _rows_by_source(pipeline.app)
        for key, table in [*zip(CONFORMED_ASSET_KEYS, CONFORMED_TABLES, strict=True), (HISTORY_KEY, HISTORY)]:
            rows = sum(counts[table].values())
            yield dg.MaterializeResult(
                asset_key=key,
                metadata={"rows": dg.MetadataValue.int(rows), ROW_COUNT: dg.MetadataValue.int(rows),
                          "ingest_snapshot_id": str(snapshots[table]),
                          "rows_by_source": counts_table(counts[table], key="source")})

    return conformed_model


def _rule_result(rule: AuditRule, total: int, first: list[tuple[str, str, str]],
                 snapshots: dict[str, int | None]) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=rule.name,
        asset_key=INVOICES_KEY,
        passed=total == 0,
        severity=dg.AssetCheckSeverity.ERROR if rule.blocking else dg.AssetCheckSeverity.WARN,
        metadata={
            "violations": dg.MetadataValue.int(total),
            "first_offenders": dg.MetadataValue.json([{"source": s, "invoice_id": i, "detail": d} for s, i, d in first]),
            "audited_ingest_snapshots": dg.MetadataValue.json({t: str(s) for t, s in snapshots.items()}),
        },
        description=None if total == 0 else f"{total} invoices fail: first {', '.join(f'{s}/{i}' for s, i, _ in first[:5])}",
    )


def _stale(app: AppConfig, tables: dict) -> list[tuple[str, str]]:
    """audit.stale_sources over the cursor table (written on `main` by every successful run)."""
    cursors = tables["_pipeline_cursors"]
    cursors.refresh()
    arrow = cursors.scan().to_arrow() if cursors.current_snapshot() is not None else cursors.schema().as_arrow().empty_table()
    con = duckdb.connect()
    try:
        con.register("_cursors", arrow)
        con.execute("CREATE VIEW main._pipeline_cursors AS SELECT source_name, max(cursor_at) AS cursor_at "
                    "FROM _cursors GROUP BY 1")
        return stale_sources(con, app, utc_now())
    finally:
        con.close()


def _quarantined(app: AppConfig, tables: dict, pinned: dict[str, int | None]) -> dict[str, list[tuple[str | None, str]]]:
    out = {}
    for name in app.sources:
        snapshot = pinned.get(f"{name}._quarantine")
        if snapshot is None:
            continue
        rows = tables[f"{name}._quarantine"].scan(snapshot_id=snapshot,
                                                  selected_fields=("invoice_id", "reason", "detected_at")).to_arrow()
        if rows.num_rows:
            out[name] = [(r["invoice_id"], r["reason"]) for r in sorted(
                rows.to_pylist(), key=lambda r: (-(r["detected_at"].timestamp() if r["detected_at"] else 0), r["invoice_id"] or ""))]
    return out


@dg.multi_asset_check(
    specs=[
        *(dg.AssetCheckSpec(rule.name, asset=INVOICES_KEY, description=rule.description, blocking=rule.blocking)
          for rule in ALL_RULES),
        dg.AssetCheckSpec(SOURCES_FRESH_CHECK, asset=INVOICES_KEY, blocking=False,
                          description="Each configured source's cursor is no older than its max_staleness (config key)."),
        dg.AssetCheckSpec(NO_QUARANTINE_CHECK, asset=INVOICES_KEY, blocking=False,
                          description="Records that could not be mapped sit in <source>._quarantine with their reason."),
    ],
    can_subset=True,
)
def iceberg_audit_checks(context: dg.AssetCheckExecutionContext, pipeline: PipelineResource):
    """Every check of the conformed model in one step, over one pin of the `ingest` branch."""
    selected = {key.name for key in context.selected_asset_check_keys}
    pause_point("checks")
    app = pipeline.app
    tables, pinned = pin(app)
    rules = [rule for rule in ALL_RULES if rule.name in selected]
    found, _ = audit_rules(tables, pinned, list(app.sources), rules, limit=10)
    audited = {t: pinned[t] for t in CONFORMED_TABLES}
    results = [_rule_result(rule, *found[rule.name], audited) for rule in rules]
    if SOURCES_FRESH_CHECK in selected:
        from invoice_pipeline.iceberg.catalog import ensure_main, open_catalog

        stale = _stale(app, ensure_main(open_catalog(app.warehouse.iceberg)))
        results.append(dg.AssetCheckResult(
            check_name=SOURCES_FRESH_CHECK, asset_key=INVOICES_KEY, passed=not stale,
            severity=dg.AssetCheckSeverity.WARN, metadata={"stale_sources": dg.MetadataValue.json(dict(stale))},
            description="; ".join(f"{s}: {why}" for s, why in stale) or None))
    if NO_QUARANTINE_CHECK in selected:
        found_q = _quarantined(app, tables, pinned)
        results.append(dg.AssetCheckResult(
            check_name=NO_QUARANTINE_CHECK, asset_key=INVOICES_KEY, passed=not found_q,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"quarantined_by_source": dg.MetadataValue.json({s: len(r) for s, r in found_q.items()}),
                      "first_records": dg.MetadataValue.json(
                          {s: [{"invoice_id": i, "reason": why} for i, why in rows[:10]] for s, rows in found_q.items()})},
            description="; ".join(f"{s}: {len(r)} quarantined, first {r[0][0]}: {r[0][1]}" for s, r in found_q.items()) or None))
    yield from results


def build_iceberg_publish_asset() -> dg.AssetsDefinition:
    @dg.asset(
        key=PUBLISHED_KEY,
        group_name="published",
        kinds={"iceberg"},
        deps=[*CONFORMED_ASSET_KEYS, HISTORY_KEY],
        automation_condition=PUBLISH_CONDITION,
        description="Fast-forwards `main` of every Iceberg table (what Trino, Spark, DuckDB, polars read) to the "
                    "`ingest` snapshots it pinned and audited itself, only after the blocking checks passed "
                    "(write-audit-publish); refused, `main` unmoved, if its own audit fails.",
    )
    def published_warehouse(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
        result = publish(pipeline.app)
        if not result.published:
            raise dg.Failure(
                "Iceberg publish refused, `main` unmoved: blocking checks failed on the newest `ingest` snapshots: "
                + "; ".join(f"{rule}: e.g. {v[0][0]}/{v[0][1]}: {v[0][2]}" for rule, v in result.failures.items()),
                metadata={"failures": dg.MetadataValue.json({k: [list(x) for x in v] for k, v in result.failures.items()})})
        return dg.MaterializeResult(metadata={
            "published_snapshots": dg.MetadataValue.json({t: str(s) for t, s in result.snapshots.items()}),
            "rows": counts_table(result.rows),
            ROW_COUNT: dg.MetadataValue.int(result.rows.get("invoices", 0))})

    return published_warehouse


def build_iceberg_aging_asset() -> dg.AssetsDefinition:
    @dg.asset(
        key=AGING_KEY,
        group_name="conformed",
        kinds={"iceberg"},
        deps=[PUBLISHED_KEY],
        description="Grain: one row per snapshot_date, source, customer, currency and aging bucket: open balances at "
                    "the end of that UTC day, from the published main.invoice_history (Iceberg table "
                    f"main.ar_aging_snapshot). Daily at '{AGING_CRON}' UTC; recomputing a day replaces it.",
    )
    def ar_aging_snapshot(context: dg.AssetExecutionContext, config: AgingSnapshotConfig,
                          pipeline: PipelineResource) -> dg.MaterializeResult:
        from datetime import date

        from invoice_pipeline.iceberg.aging import build_aging_snapshot_iceberg

        try:
            day = date.fromisoformat(config.snapshot_date) if config.snapshot_date else None
        except ValueError:
            raise dg.Failure(f"snapshot_date must be YYYY-MM-DD, got {config.snapshot_date!r}") from None
        result = build_aging_snapshot_iceberg(pipeline.app, day)
        return dg.MaterializeResult(metadata={
            **{k: dg.MetadataValue.json(v) if isinstance(v, dict) else v for k, v in result.items()},
            ROW_COUNT: dg.MetadataValue.int(result["rows"])})

    return ar_aging_snapshot


def _executor() -> dg.ExecutorDefinition:
    choice = os.environ.get(EXECUTOR_ENV, "multiprocess").strip().lower()
    if choice == "in_process":
        return dg.in_process_executor
    if choice == "multiprocess":
        return dg.multiprocess_executor
    if choice == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    if choice == "celery":
        from dagster_celery import celery_executor

        return celery_executor
    raise dg.DagsterInvalidDefinitionError(
        f"environment variable {EXECUTOR_ENV}={choice!r}: expected in_process, multiprocess, k8s or celery")


def build_iceberg_definitions(app: AppConfig, config_path: str | None = None) -> dg.Definitions:
    log.info("warehouse.backend iceberg: the Dagster graph leaves out %s (DuckDB only, docs/ICEBERG.md)",
             ", ".join(DUCKDB_ONLY))
    return dg.Definitions(
        assets=[*(build_iceberg_source_asset(n, c) for n, c in app.sources.items()),
                *(build_iceberg_repoll_asset(n, c) for n, c in app.sources.items()),
                *(build_iceberg_reconcile_asset(n, c) for n, c in app.sources.items()),
                build_iceberg_conformed_asset(app), build_iceberg_publish_asset(), build_iceberg_aging_asset()],
        asset_checks=[iceberg_audit_checks],
        jobs=[dg.define_asset_job(ALL_ASSETS_JOB, selection=dg.AssetSelection.all()),
              *(dg.define_asset_job(source_job_name(n), selection=dg.AssetSelection.keys(source_asset_key(n)),
                                    description=f"Incremental extraction of source '{n}' ({c.type}) into Iceberg.",
                                    tags={"source": n}) for n, c in app.sources.items()),
              *(dg.define_asset_job(lifecycle_job_name(n, "repoll"), selection=dg.AssetSelection.keys(repoll_asset_key(n)),
                                    description=f"repoll of source '{n}' into Iceberg (the conformed counts, checks "
                                                "and publish follow by automation).", tags={"source": n})
                for n in app.sources),
              *(dg.define_asset_job(lifecycle_job_name(n, "deletion_reconciliation"),
                                    selection=dg.AssetSelection.keys(reconcile_asset_key(n)),
                                    description=f"deletion_reconciliation of source '{n}' in Iceberg (the conformed "
                                                "counts, checks and publish follow by automation).", tags={"source": n})
                for n in app.sources),
              dg.define_asset_job(AGING_JOB, selection=dg.AssetSelection.keys(AGING_KEY),
                                  description="Daily AR aging snapshot from the published invoice history.")],
        schedules=[*build_schedules(app), *(dg.ScheduleDefinition(
            name=schedule_name(lifecycle_job_name(n, "repoll")), job_name=lifecycle_job_name(n, "repoll"),
            cron_schedule=c.repoll_schedule, execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING,
            description=f"repoll of '{n}' on cron '{c.repoll_schedule}'.")
            for n, c in app.sources.items() if c.repoll_schedule), *(dg.ScheduleDefinition(
            name=schedule_name(lifecycle_job_name(n, "deletion_reconciliation")),
            job_name=lifecycle_job_name(n, "deletion_reconciliation"), cron_schedule=c.reconcile_schedule,
            execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING,
            description=f"deletion_reconciliation of '{n}' on cron '{c.reconcile_schedule}'.")
            for n, c in app.sources.items() if c.reconcile_schedule and c.reconcile_schedule != "always"),
            dg.ScheduleDefinition(
            name=schedule_name(AGING_JOB), job_name=AGING_JOB, cron_schedule=AGING_CRON, execution_timezone="UTC",
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description="AR aging snapshot of the UTC day, late that day.")],
        sensors=[automation_sensor, log_run_failures, *build_alert_sensors(app.alerts)],
        resources={"pipeline": PipelineResource(config_path=config_path or "")},
        executor=_executor(),
    )
