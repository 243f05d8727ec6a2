"""Alerts to a Slack-compatible webhook (`{"text": ...}`): failed runs, and runs whose blocking checks
failed (nothing was published), through Dagster's run status sensors. In Dagster 1.13 a failed
blocking check fails its run, so the failure sensor posts both in one message; a second sensor
watches successful runs too, should a run ever end well with a failed blocking check.

The sensors run in the Dagster daemon (`dagster dev`, `dagster-daemon`) and see every run of the
instance, the CLI's included. The URL comes from the environment variable named by
`alerts.webhook_url_env`: it holds a token, so it is never logged, and a failed post logs only the
variable's name and the HTTP status or error class.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request

import dagster as dg
from dagster._core.events import DagsterEventType

from invoice_pipeline.config import AlertsConfig
from invoice_pipeline.defs.schedules import _root_cause, failure_line

log = logging.getLogger("invoice_pipeline.alerts")


def post_alert(alerts: AlertsConfig, text: str) -> bool:
    """POST {"text": text} to the webhook; True if it answered 2xx. Never raises, never logs the URL."""
    url = os.environ.get(alerts.webhook_url_env, "").strip()
    if not url:
        log.warning("alert not sent: environment variable %s (alerts.webhook_url_env) is not set", alerts.webhook_url_env)
        return False
    request = urllib.request.Request(url, data=json.dumps({"text": text}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=alerts.timeout.total_seconds()) as response:  # noqa: S310
            return 200 <= response.status < 300
    except urllib.error.HTTPError as exc:
        log.warning("alert not sent: the webhook in $%s answered HTTP %s", alerts.webhook_url_env, exc.code)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.warning("alert not sent: the webhook in $%s failed: %s", alerts.webhook_url_env, type(exc).__name__)
    return False


def failed_blocking_checks(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """'check (asset): why' for every blocking check of the run that failed."""
    out = []
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        if evaluation.blocking and not evaluation.passed:
            why = f": {evaluation.description}" if evaluation.description else ""
            out.append(f"{evaluation.check_name} ({evaluation.asset_key.to_user_string()}){why}")
    return out


def checks_text(run: dg.DagsterRun, failed: list[str]) -> str:
    return (f"invoice-pipeline: run {run.run_id} of job {run.job_name}: blocking checks failed, nothing published: "
            + "; ".join(failed))


def build_alert_sensors(alerts: AlertsConfig | None) -> list[dg.SensorDefinition]:
    if alerts is None:
        return []
    sensors: list[dg.SensorDefinition] = []

    @dg.run_failure_sensor(name="alert_run_failure", default_status=dg.DefaultSensorStatus.RUNNING,
                           description=f"Posts failed runs (and their failed blocking checks) to the webhook in "
                                       f"${alerts.webhook_url_env}.")
    def alert_run_failure(context: dg.RunFailureSensorContext) -> None:
        run = context.dagster_run
        failed = failed_blocking_checks(context.instance, run.run_id) if alerts.on_blocking_check_failure else []
        if not alerts.on_run_failure:  # only the checks are wanted (a failed blocking check fails the run)
            if failed:
                post_alert(alerts, checks_text(run, failed))
            return
        steps = {event.step_key or "?": _root_cause(event.step_failure_data.error)
                 for event in context.get_step_failure_events()
                 if event.step_failure_data and event.step_failure_data.error}
        text = "invoice-pipeline: " + failure_line(run.run_id, run.job_name, dict(run.tags),
                                                   context.failure_event.message or "", steps)
        if failed:
            text += "\nblocking checks failed, nothing published: " + "; ".join(failed)
        post_alert(alerts, text)

    @dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, name="alert_blocking_checks",
                          default_status=dg.DefaultSensorStatus.RUNNING,
                          description=f"Posts runs whose blocking checks failed (nothing published) to the webhook "
                                      f"in ${alerts.webhook_url_env}.")
    def alert_blocking_checks(context: dg.RunStatusSensorContext) -> None:
        failed = failed_blocking_checks(context.instance, context.dagster_run.run_id)
        if failed:
            post_alert(alerts, checks_text(context.dagster_run, failed))

    if alerts.on_run_failure or alerts.on_blocking_check_failure:
        sensors.append(alert_run_failure)
    if alerts.on_blocking_check_failure:  # in case a run with a failed blocking check still succeeds
        sensors.append(alert_blocking_checks)
    return sensors

