"""Dagster wiring of the invoice lifecycle (invoice_pipeline/lifecycle/, history.py): per source a re-poll of
open invoices and a deletion reconciliation; over all sources the history and the daily aging snapshot.

When things run:
- `<source>/open_invoices_repoll`: after every materialization of `<source>/invoices` (declarative
  automation), or on its own cron when the source sets `repoll_schedule`.
- `<source>/deletion_reconciliation`: on the source's `reconcile_schedule` (default daily 03:00 UTC).
- `main/invoice_history`: after any of those (automation); every load already records its versions,
  this asset re-syncs idempotently and carries the checks that catch a gap or an overlap.
- `main/ar_aging_snapshot`: daily at 23:55 UTC for that day; a past day from the launchpad.
"""

from dataclasses import dataclass, field
from datetime import date
from typing import Any

import dagster as dg
import pydantic

from invoice_pipeline import history, lifecycle
from invoice_pipeline.config import AppConfig, SourceConfig
from invoice_pipeline.defs.keys import (AGING_JOB, AGING_KEY, HISTORY_CONTIGUOUS_CHECK, HISTORY_KEY,
                                        HISTORY_MATCHES_CHECK, WRITE_POOL, lifecycle_job_name, reconcile_asset_key,
                                        repoll_asset_key, schedule_name, source_asset_key)
from invoice_pipeline.defs.resources import PipelineResource
from invoice_pipeline.lifecycle_tables import ensure_lifecycle_tables
from invoice_pipeline.testpoints import pause_point
from invoice_pipeline.views import AGING_BUCKETS

AGING_CRON = "55 23 * * *"  # late in the UTC day whose end the snapshot describes
LIFECYCLE_CONDITION = dg.AutomationCondition.eager()


def as_dagster_metadata(values: dict[str, Any]) -> dict[str, Any]:
    return {k: dg.MetadataValue.json(v) if isinstance(v, list | dict) else v
            for k, v in values.items() if v is not None}


def load_in_this_run(context: dg.AssetExecutionContext, name: str) -> tuple[str | None, bool]:
    """The pipeline run id of the source's load, if this same job run materialized it, and whether
    that load compared every listed invoice's balance with the stored one (source_stats
    `balances_compared: all`), which leaves its re-poll nothing to read."""
    event = context.instance.get_latest_materialization_event(source_asset_key(name))
    if event is None or event.run_id != context.run_id or event.asset_materialization is None:
        return None, False
    metadata = event.asset_materialization.metadata
    run_id = metadata.get("run_id")
    stats = metadata.get("source_stats")
    stats = getattr(stats, "value", stats) or {}
    return getattr(run_id, "value", run_id), isinstance(stats, dict) and stats.get("balances_compared") == "all"


def repoll_wording(config: SourceConfig) -> tuple[str, str]:
    """How far back a re-poll reaches and when it runs, for the asset descriptions of both backends."""
    horizon = (f", due or invoice date within repoll_horizon = {config.repoll_horizon.days} days"
               if config.repoll_horizon is not None else "; every one, however old (repoll_horizon: none)")
    when = (f"on cron '{config.repoll_schedule}' (config key repoll_schedule)" if config.repoll_schedule
            else "after every run of the source (set repoll_schedule for a cron instead)")
    return horizon, when


def build_repoll_asset(name: str, config: SourceConfig, pool: str | None = WRITE_POOL) -> dg.AssetsDefinition:
    horizon, when = repoll_wording(config)

    @dg.asset(
        key=repoll_asset_key(name),
        group_name=name,
        kinds={"duckdb", "python"},
        tags={"source_type": config.type},
        deps=[source_asset_key(name)],
        pool=pool,
        automation_condition=None if config.repoll_schedule else LIFECYCLE_CONDITION,
        description=(
            f"Re-reads the invoices of '{name}' still open in main.invoices (balance due <> 0, not void, not "
            f"deleted{horizon}) with the "
            "API's cheapest read of specific invoices, so payments that do not move the modification time "
            f"converge. Runs {when}; never moves the cursor. In a job run that also loads the source, the "
            "invoices that load just wrote are not read again (metadata: skipped_just_loaded), nor, when that load "
            "compared every listed balance with the stored one (CRM.COM; Oracle in list-only mode), any other "
            "(skipped_compared_by_load). Metadata api_calls, pages, detail_calls: what the re-poll cost."
        ),
    )
    def _repoll(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
        after_run_id, compared = load_in_this_run(context, name)
        result = lifecycle.repoll_open_invoices(pipeline.app, name, warehouse=pipeline.warehouse,
                                                after_run_id=after_run_id, load_compared_all=compared)
        return dg.MaterializeResult(metadata=as_dagster_metadata(result.as_metadata()))

    return _repoll


class ReconcileConfig(dg.Config):
    """Launchpad config of a deletion reconciliation."""

    allow_mass_deletion: bool = pydantic.Field(
        default=False,
        description="Mark invoices deleted even beyond reconcile_max_deleted_share, for this run only.")


def build_reconcile_asset(name: str, config: SourceConfig, pool: str | None = WRITE_POOL) -> dg.AssetsDefinition:

    @dg.asset(
        key=reconcile_asset_key(name),
        group_name=name,
        kinds={"duckdb", "python"},
        tags={"source_type": config.type},
        deps=[source_asset_key(name)],
        pool=pool,
        description=(
            f"Compares the invoice ids '{name}' lists now with main.invoices; an invoice gone from the source "
            "(confirmed by a direct read) is marked is_deleted with deleted_detected_at, never erased; a deleted "
            "invoice found again is reloaded (un-deleted). Refuses to mark more than reconcile_max_deleted_share "
            f"({config.reconcile_max_deleted_share:.0%}) at once. Cron '{config.reconcile_schedule}'."
        ),
    )
    def _reconcile(
        context: dg.AssetExecutionContext, config: ReconcileConfig, pipeline: PipelineResource
    ) -> dg.MaterializeResult:
        result = lifecycle.reconcile_deletions(pipeline.app, name, warehouse=pipeline.warehouse,
                                               allow_mass_deletion=config.allow_mass_deletion)
        return dg.MaterializeResult(metadata=as_dagster_metadata(result.as_metadata()))

    return _reconcile


def build_history_asset(app: AppConfig, pool: str | None = WRITE_POOL) -> dg.AssetsDefinition:
    deps = [k for n in app.sources for k in (source_asset_key(n), repoll_asset_key(n), reconcile_asset_key(n))]

    @dg.asset(
        key=HISTORY_KEY,
        group_name="conformed",
        kinds={"duckdb"},
        deps=deps,
        pool=pool,
        automation_condition=LIFECYCLE_CONDITION,
        description=(
            "Grain: one row per observed version of an invoice (source_name, invoice_id, valid_from), valid_from "
            "inclusive to valid_to exclusive, NULL valid_to = current. Every load records its versions; this "
            "asset re-syncs (idempotent) and is what the gap/overlap checks look at."
        ),
    )
    def invoice_history(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
        pause_point("history")
        added = {name: history.record_history(pipeline.warehouse, name) for name in app.sources}
        with pipeline.warehouse.reader() as con:
            versions, current = con.execute(
                "SELECT count(*), count(*) FILTER (WHERE valid_to IS NULL) FROM main.invoice_history").fetchall()[0]
        return dg.MaterializeResult(metadata={
            "versions": dg.MetadataValue.int(versions), "current_versions": dg.MetadataValue.int(current),
            "dagster/row_count": dg.MetadataValue.int(versions),
            "versions_added_by_sync": dg.MetadataValue.json(added)})

    return invoice_history


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(HISTORY_CONTIGUOUS_CHECK, asset=HISTORY_KEY, blocking=True,
                          description="Per invoice, versions follow each other without gap or overlap and exactly "
                                      "the last one is current (valid_to NULL)."),
        dg.AssetCheckSpec(HISTORY_MATCHES_CHECK, asset=HISTORY_KEY, blocking=False,
                          description="The current history version of every invoice is what main.invoices holds (a "
                                      "load whose history step did not run, or deletion marks lost by a replay, show "
                                      "here)."),
    ],
    can_subset=True,
)
def history_checks(context: dg.AssetCheckExecutionContext, pipeline: PipelineResource):
    """Both history checks in one step (one process in a UI run, one connection)."""
    selected = {key.name for key in context.selected_asset_check_keys}
    results: list[dg.AssetCheckResult] = []
    with pipeline.warehouse.writer() as con:
        ensure_lifecycle_tables(con)
        if HISTORY_CONTIGUOUS_CHECK in selected:
            total, first = history.history_violations(con, limit=10)
            results.append(dg.AssetCheckResult(
                check_name=HISTORY_CONTIGUOUS_CHECK,
                asset_key=HISTORY_KEY,
                passed=total == 0,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={"violations": dg.MetadataValue.int(total),
                          "first_offenders": dg.MetadataValue.json(
                              [{"rule": r, "source": s, "invoice_id": i, "detail": d} for r, s, i, d in first])},
                description=None if total == 0 else f"{total} history rows fail: "
                            + ", ".join(f"{r} {s}/{i}" for r, s, i, _ in first[:5]),
            ))
        if HISTORY_MATCHES_CHECK in selected:
            total, first = history.history_out_of_sync(con, limit=10)
            results.append(dg.AssetCheckResult(
                check_name=HISTORY_MATCHES_CHECK,
                asset_key=HISTORY_KEY,
                passed=total == 0,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"out_of_sync": dg.MetadataValue.int(total),
                          "first_offenders": dg.MetadataValue.json([{"source": s, "invoice_id": i} for s, i in first])},
                description=None if total == 0 else f"{total} invoices differ from their current history version",
            ))
    yield from results


class AgingSnapshotConfig(dg.Config):
    """Launchpad config: leave empty for today (UTC); a past day (YYYY-MM-DD) is recomputed from the history."""

    snapshot_date: str = ""


def build_aging_asset(app: AppConfig, pool: str | None = WRITE_POOL) -> dg.AssetsDefinition:
    @dg.asset(
        key=AGING_KEY,
        group_name="conformed",
        kinds={"duckdb"},
        deps=[HISTORY_KEY],
        pool=pool,
        description=(
            f"Grain: one row per snapshot_date, source, customer, currency and aging bucket ({', '.join(AGING_BUCKETS)}; "
            "those of the ar_aging view): open balances at the end of that UTC day, from main.invoice_history. "
            f"Daily at '{AGING_CRON}' UTC; recomputing a day replaces it."
        ),
    )
    def ar_aging_snapshot(
        context: dg.AssetExecutionContext, config: AgingSnapshotConfig, pipeline: PipelineResource
    ) -> dg.MaterializeResult:
        try:
            day = date.fromisoformat(config.snapshot_date) if config.snapshot_date else None
        except ValueError:
            raise dg.Failure(f"snapshot_date must be YYYY-MM-DD, got {config.snapshot_date!r}") from None
        result = lifecycle.build_aging_snapshot(pipeline.warehouse, day, sources=list(app.sources))
        with pipeline.warehouse.reader() as con:  # the catalog's row count: every day kept
            total = con.execute("SELECT count(*) FROM main.ar_aging_snapshot").fetchone()[0]
        return dg.MaterializeResult(metadata={**as_dagster_metadata(result), "dagster/row_count": dg.MetadataValue.int(total)})

    return ar_aging_snapshot


@dataclass
class LifecycleDefinitions:
    assets: list[dg.AssetsDefinition] = field(default_factory=list)
    checks: list[dg.AssetChecksDefinition] = field(default_factory=list)
    jobs: list[Any] = field(default_factory=list)
    schedules: list[dg.ScheduleDefinition] = field(default_factory=list)


def build_lifecycle(app: AppConfig, pool: str | None = WRITE_POOL) -> LifecycleDefinitions:
    out = LifecycleDefinitions(checks=[history_checks])
    for name, cfg in app.sources.items():
        out.assets += [build_repoll_asset(name, cfg, pool), build_reconcile_asset(name, cfg, pool)]
        for kind, key, cron in (("repoll", repoll_asset_key(name), cfg.repoll_schedule),
                                ("deletion_reconciliation", reconcile_asset_key(name), cfg.reconcile_schedule)):
            job_name = lifecycle_job_name(name, kind)
            out.jobs.append(dg.define_asset_job(job_name, selection=dg.AssetSelection.keys(key, HISTORY_KEY),
                                                tags={"source": name}, description=f"{kind} of source '{name}'."))
            if cron and cron != "always":  # "always": part of every run of the source (schedules.py)
                out.schedules.append(dg.ScheduleDefinition(
                    name=schedule_name(job_name), job_name=job_name, cron_schedule=cron, execution_timezone="UTC",
                    default_status=dg.DefaultScheduleStatus.RUNNING,
                    description=f"{kind} of '{name}' on cron '{cron}'."))
    out.assets += [build_history_asset(app, pool), build_aging_asset(app, pool)]
    out.jobs.append(dg.define_asset_job(AGING_JOB, selection=dg.AssetSelection.keys(AGING_KEY),
                                        description="Daily AR aging snapshot from the invoice history."))
    out.schedules.append(dg.ScheduleDefinition(
        name=schedule_name(AGING_JOB), job_name=AGING_JOB, cron_schedule=AGING_CRON, execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING, description="AR aging snapshot of the UTC day, late that day."))
    return out
