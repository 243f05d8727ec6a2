"""When things run: a cron schedule per source, declarative automation downstream, a failure sensor.

The conformed model and the publish step use declarative automation (Dagster's recommended way
since 1.9 to say "refresh me when my inputs changed"): the conformed asset runs after any source
landed, and publish only once the blocking checks of its inputs passed.
"""

import logging

import dagster as dg

from invoice_pipeline.config import AppConfig

log = logging.getLogger("invoice_pipeline.sensors")

CONFORMED_CONDITION = dg.AutomationCondition.eager()
PUBLISH_CONDITION = dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()


def source_job_name(source_name: str) -> str:
    return f"{source_name}_incremental"


def build_source_jobs(app: AppConfig) -> list:
    return [
        dg.define_asset_job(
            source_job_name(name),
            selection=dg.AssetSelection.keys(dg.AssetKey([name, "invoices"])),
            description=f"Incremental extraction of source '{name}' ({cfg.type}).",
            tags={"source": name},
        )
        for name, cfg in app.sources.items()
    ]


def build_schedules(app: AppConfig) -> list[dg.ScheduleDefinition]:
    return [
        dg.ScheduleDefinition(
            name=f"{name}_schedule",
            job_name=source_job_name(name),
            cron_schedule=cfg.schedule,
            execution_timezone="UTC",
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description=f"Incremental run of '{name}' on cron '{cfg.schedule}' (config key `schedule`).",
        )
        for name, cfg in app.sources.items()
    ]


automation_sensor = dg.AutomationConditionSensorDefinition(
    "conformed_and_publish_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)


@dg.run_failure_sensor(name="log_run_failures", default_status=dg.DefaultSensorStatus.RUNNING)
def log_run_failures(context: dg.RunFailureSensorContext) -> None:
    """One clear line per failed run, for whoever watches the daemon's logs."""
    message = context.failure_event.message or "no message"
    line = f"run {context.dagster_run.run_id} of job {context.dagster_run.job_name} failed: {message}"
    log.error(line)
    context.log.error(line)
