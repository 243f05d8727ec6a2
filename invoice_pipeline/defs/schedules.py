"""When things run: a cron schedule per source, declarative automation downstream, a failure sensor.

The conformed model and the publish step use declarative automation (Dagster's recommended way
since 1.9 to say "refresh me when my inputs changed", evaluated by one automation sensor): the
conformed asset runs after any source landed, and publish only once the blocking checks of its
inputs passed. See docs/OPERATIONS.md.
"""

import logging

import dagster as dg

from invoice_pipeline.config import AppConfig
from invoice_pipeline.defs.keys import reconcile_asset_key, source_asset_key, source_job_name, source_schedule_name

log = logging.getLogger("invoice_pipeline.sensors")

# eager() waits until *every* dependency has been materialized once: a source newly added to the
# config, or one whose first run keeps failing, would then hold back the conformed refresh (and
# publishing) of all the others. Here one landed source is enough.
CONFORMED_CONDITION = (
    dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing())
    & ~dg.AutomationCondition.all_deps_match(dg.AutomationCondition.missing())
).with_label("eager, once any source landed")
PUBLISH_CONDITION = dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()


def build_source_jobs(app: AppConfig) -> list:
    return [
        dg.define_asset_job(
            source_job_name(name),
            selection=dg.AssetSelection.keys(source_asset_key(name), *(
                [reconcile_asset_key(name)] if cfg.reconcile_schedule == "always" else [])),
            description=f"Incremental extraction of source '{name}' ({cfg.type}).",
            tags={"source": name},
        )
        for name, cfg in app.sources.items()
    ]


def build_schedules(app: AppConfig) -> list[dg.ScheduleDefinition]:
    return [
        dg.ScheduleDefinition(
            name=source_schedule_name(name),
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


def failure_line(run_id: str, job_name: str, tags: dict[str, str], message: str, step_errors: dict[str, str]) -> str:
    """One line a person can act on: which run, which job/source, which step, and the root cause."""
    what = f"job {job_name}" + (f" (source {tags['source']})" if "source" in tags else "")
    if step_errors:
        causes = "; ".join(f"step {step}: {error}" for step, error in step_errors.items())
    else:  # failed before any step ran (code location, config, launch)
        causes = message or "no message"
    return " ".join(f"run {run_id} of {what} failed: {causes}".split())


def _root_cause(error) -> str:
    while getattr(error, "cause", None) is not None:
        error = error.cause
    message = error.message.strip()
    head, _, rest = message.partition(": ")  # "invoice_pipeline.errors.SourceError: ..." -> "SourceError: ..."
    return f"{head.rsplit('.', 1)[1]}: {rest}" if head.endswith("Error") and "." in head else message


@dg.run_failure_sensor(name="log_run_failures", default_status=dg.DefaultSensorStatus.RUNNING)
def log_run_failures(context: dg.RunFailureSensorContext) -> None:
    """One clear line per failed run, for whoever watches the daemon's logs or the sensor's ticks."""
    steps = {
        event.step_key or "?": _root_cause(event.step_failure_data.error)
        for event in context.get_step_failure_events()
        if event.step_failure_data and event.step_failure_data.error
    }
    run = context.dagster_run
    line = failure_line(run.run_id, run.job_name, dict(run.tags), context.failure_event.message or "", steps)
    log.error(line)
    context.log.error(line)
