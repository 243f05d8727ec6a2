"""Every name the Dagster wiring and its callers share: asset keys, check names, job names, the pool.

One home, so the assets (defs/assets.py, defs/lifecycle.py), their checks (defs/checks.py,
defs/drift_check.py), the jobs and schedules (defs/schedules.py) and the CLI's runs (runner.py)
cannot spell a key two ways. The reconciliation rules' check names are their `reconcile.RULES` names.
"""

from __future__ import annotations

import dagster as dg

from invoice_pipeline.conformed import CONFORMED_TABLES

# Every asset that writes the DuckDB file, for runs the UI, schedules and sensors launch: the run queue
# holds one such run at a time (granularity `run`, limit 1 in the instance's dagster.yaml, runner.py).
# Correctness rests on the warehouse's file lock, not on the pool (docs/DESIGN.md, "One writer, many runs").
WRITE_POOL = "duckdb_write"

# -- assets over all sources -------------------------------------------------------------------------
CONFORMED_ASSET_KEYS = [dg.AssetKey(["main", t]) for t in CONFORMED_TABLES]
INVOICES_KEY = dg.AssetKey(["main", "invoices"])  # the conformed invoices: the audit checks hang on it
HISTORY_KEY = dg.AssetKey(["main", "invoice_history"])
AGING_KEY = dg.AssetKey(["main", "ar_aging_snapshot"])
PUBLISHED_KEY = dg.AssetKey(["published", "warehouse"])


def conformed_asset_key(table: str) -> dg.AssetKey:
    return dg.AssetKey(["main", table])


# -- assets per source ---------------------------------------------------------------------------------
def source_asset_key(source_name: str) -> dg.AssetKey:
    return dg.AssetKey([source_name, "invoices"])


def repoll_asset_key(source_name: str) -> dg.AssetKey:
    return dg.AssetKey([source_name, "open_invoices_repoll"])


def reconcile_asset_key(source_name: str) -> dg.AssetKey:
    return dg.AssetKey([source_name, "deletion_reconciliation"])


def lifecycle_asset_keys(sources: list[str]) -> list[dg.AssetKey]:
    """What a run of these sources should also materialize (re-poll and history), e.g. for the CLI."""
    return [*(repoll_asset_key(s) for s in sources), HISTORY_KEY]


# -- checks (besides the reconciliation rules) -----------------------------------------------------------
SCHEMA_DRIFT_CHECK = "schema_drift"  # on each source asset
SOURCES_FRESH_CHECK = "sources_fresh"  # on INVOICES_KEY
NO_QUARANTINE_CHECK = "no_quarantined_records"  # on INVOICES_KEY
HISTORY_CONTIGUOUS_CHECK = "history_contiguous"  # on HISTORY_KEY
HISTORY_MATCHES_CHECK = "history_matches_invoices"  # on HISTORY_KEY

# -- jobs, schedules and tags ----------------------------------------------------------------------------
ALL_ASSETS_JOB = "invoice_pipeline_job"
AGING_JOB = "ar_aging_snapshot_daily"
RUN_ID_TAG_PREFIX = "invoice_pipeline/run_id."  # + source name: that source's pipeline run id in this Dagster run


def source_job_name(source_name: str) -> str:
    return f"{source_name}_incremental"


def lifecycle_job_name(source_name: str, kind: str) -> str:
    """kind: "repoll" or "deletion_reconciliation"."""
    return f"{source_name}_{kind}"


def source_schedule_name(source_name: str) -> str:
    return f"{source_name}_schedule"


def schedule_name(job_name: str) -> str:
    """The schedule of a lifecycle or aging job."""
    return f"{job_name}_schedule"
