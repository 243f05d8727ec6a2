"""Dagster wiring: thin assets, checks and resources over the plain functions of the package."""

import dagster as dg

from invoice_pipeline.config import AppConfig
from invoice_pipeline.defs.alerts import build_alert_sensors
from invoice_pipeline.defs.assets import build_conformed_asset, build_publish_asset, build_source_asset
from invoice_pipeline.defs.checks import build_checks
from invoice_pipeline.defs.keys import ALL_ASSETS_JOB, WRITE_POOL
from invoice_pipeline.defs.lifecycle import build_lifecycle
from invoice_pipeline.defs.resources import PipelineResource
from invoice_pipeline.defs.schedules import automation_sensor, build_schedules, build_source_jobs, log_run_failures


def build_definitions(app: AppConfig, config_path: str | None = None,
                      write_pool: str | None = WRITE_POOL) -> dg.Definitions:
    """`write_pool=None` for the CLI's in-process runs: they take no pool slot (runner.py says why).
    With `warehouse.backend: iceberg` the Iceberg graph (defs/iceberg_assets.py): no pool, no lifecycle."""
    if app.warehouse.backend == "iceberg":
        from invoice_pipeline.defs.iceberg_assets import build_iceberg_definitions

        return build_iceberg_definitions(app, config_path)
    source_assets = [build_source_asset(name, cfg, write_pool) for name, cfg in app.sources.items()]
    life = build_lifecycle(app, write_pool)  # re-poll, deletion reconciliation, history, aging snapshot
    return dg.Definitions(
        assets=[*source_assets, build_conformed_asset(app, write_pool), build_publish_asset(write_pool), *life.assets],
        asset_checks=[*build_checks(), *life.checks],
        jobs=[dg.define_asset_job(ALL_ASSETS_JOB, selection=dg.AssetSelection.all()), *build_source_jobs(app),
              *life.jobs],
        schedules=[*build_schedules(app), *life.schedules],
        sensors=[automation_sensor, log_run_failures, *build_alert_sensors(app.alerts)],
        resources={"pipeline": PipelineResource(config_path=config_path or "")},
        # One process per run, its steps one after another: a step process per asset costs more in
        # start-up (imports, instance, warehouse) than its work (benchmarks/RESULTS.md, addendum 5),
        # and the steps take turns at the warehouse anyway. The CLI runs the same way (execute_in_process).
        executor=dg.in_process_executor,
    )
