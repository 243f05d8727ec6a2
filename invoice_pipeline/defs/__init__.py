"""Dagster wiring: thin assets, checks and resources over the plain functions of the package."""

import dagster as dg

from invoice_pipeline.config import AppConfig
from invoice_pipeline.defs.assets import build_conformed_asset, build_publish_asset, build_source_asset
from invoice_pipeline.defs.checks import build_checks
from invoice_pipeline.defs.lifecycle import build_lifecycle
from invoice_pipeline.defs.resources import PipelineResource
from invoice_pipeline.defs.schedules import automation_sensor, build_schedules, build_source_jobs, log_run_failures

ALL_ASSETS_JOB = "invoice_pipeline_job"


def build_definitions(app: AppConfig, config_path: str | None = None) -> dg.Definitions:
    source_assets = [build_source_asset(name, cfg) for name, cfg in app.sources.items()]
    life = build_lifecycle(app)  # re-poll, deletion reconciliation, history, aging snapshot
    return dg.Definitions(
        assets=[*source_assets, build_conformed_asset(app), build_publish_asset(), *life.assets],
        asset_checks=[*build_checks(), *life.checks],
        jobs=[dg.define_asset_job(ALL_ASSETS_JOB, selection=dg.AssetSelection.all()), *build_source_jobs(app),
              *life.jobs],
        schedules=[*build_schedules(app), *life.schedules],
        sensors=[automation_sensor, log_run_failures],
        resources={"pipeline": PipelineResource(config_path=config_path or "")},
    )
