"""Runs the Dagster definitions in-process for the CLI, on a persistent instance, and reports.

A CLI run claims no Dagster pool slot: its steps run one at a time in this process and every write
goes through the warehouse's file lock, which the OS releases when a process dies. So a killed CLI
run can never leave a slot behind that wedges the next run (docs/OPERATIONS.md, "Crashes").
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
from filelock import FileLock

from invoice_pipeline.config import AppConfig

log = logging.getLogger("invoice_pipeline.runner")

DAGSTER_YAML = """\
# Written by invoice-pipeline: a persistent local instance (run history, schedules, pool limits).
# Rewritten when a newer invoice-pipeline ships other settings; delete this header to keep your own.
concurrency:
  pools:
    # A UI or scheduled run that writes the warehouse waits in the run queue (visible in the UI) while
    # another one runs: the pool is taken per run, so no step of a started run ever waits for a slot.
    granularity: run
    default_limit: 1
run_monitoring:
  # The daemon (dagster dev, dagster-daemon) fails a run whose worker process died (OOM kill, pod
  # eviction), which frees its place in the pool; without it a dead run holds the pool for good.
  enabled: true
  start_timeout_seconds: 180
  max_resume_run_attempts: 0
  poll_interval_seconds: 30
  free_slots_after_run_end_seconds: 10  # slots a run still held when it ended (a dead op-granularity run)
telemetry:
  enabled: false
python_logs:
  # progress lines of the pipeline's own loggers show in the run logs of the UI
  managed_python_loggers:
    - invoice_pipeline
  python_log_level: INFO
"""
_OURS = DAGSTER_YAML.splitlines()[0]
WAREHOUSE_MARKER = "invoice_pipeline_warehouse"  # which warehouse's runs this instance records

# Tags on every CLI run: what it ran against, and the process that ran it (to tell a dead run).
CONFIG_TAG = "invoice_pipeline/config"
WAREHOUSE_TAG = "invoice_pipeline/warehouse"
HOST_TAG = "invoice_pipeline/host"
PID_TAG = "invoice_pipeline/pid"
PROCESS_START_TAG = "invoice_pipeline/process_start"


def _write_instance_yaml(home: Path) -> None:
    yaml_path = home / "dagster.yaml"
    if not yaml_path.exists() or (yaml_path.read_text().startswith(_OURS) and yaml_path.read_text() != DAGSTER_YAML):
        yaml_path.write_text(DAGSTER_YAML)


def ensure_dagster_home(warehouse_path: Path | None = None) -> Path:
    """The Dagster instance (absolute, with our dagster.yaml) that records runs of this warehouse.

    DAGSTER_HOME if set, else `dagster_home` beside the warehouse (data/dagster_home by default).
    An instance records one warehouse: the first that runs in it. A CLI run against another one
    (another config, the demo) is recorded in `<DAGSTER_HOME>/warehouses/<name>-<hash>` instead, so
    the UI's asset history of `published/warehouse` shows only runs that wrote the warehouse it reads.
    """
    default = (warehouse_path.parent / "dagster_home") if warehouse_path else Path("data/dagster_home")
    home = Path(os.environ.get("DAGSTER_HOME") or default).resolve()
    home.mkdir(parents=True, exist_ok=True)
    if warehouse_path is not None:
        target = str(warehouse_path.resolve())
        marker = home / WAREHOUSE_MARKER
        if not marker.exists():
            marker.write_text(target + "\n")
        elif marker.read_text().strip() != target:
            digest = hashlib.sha256(target.encode()).hexdigest()[:10]
            other = home / "warehouses" / f"{warehouse_path.stem}-{digest}"
            log.info("Dagster instance %s records warehouse %s; runs against %s are recorded in %s",
                     home, marker.read_text().strip(), target, other)
            other.mkdir(parents=True, exist_ok=True)
            (other / WAREHOUSE_MARKER).write_text(target + "\n")
            home = other
    _write_instance_yaml(home)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def _process_start(pid: int) -> str:
    """The kernel's start time of a process (Linux), so a reused pid is not taken for the old run's."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_tags() -> dict[str, str]:
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), PROCESS_START_TAG: _process_start(pid)}


def _process_alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not start or _process_start(pid) in ("", start)


def fail_dead_cli_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark as failed the unfinished CLI runs of this host whose process is gone (and free any slot).

    A SIGKILLed `invoice-pipeline run` never reports its end: without this its run stays "Started" in
    the UI for good. Returns the run ids it failed.
    """
    failed = []
    records = instance.get_run_records(dg.RunsFilter(
        statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING],
        tags={HOST_TAG: socket.gethostname()},
    ))
    for record in records:
        run = record.dagster_run
        pid = run.tags.get(PID_TAG, "")
        if not pid.isdigit() or _process_alive(int(pid), run.tags.get(PROCESS_START_TAG, "")):
            continue
        message = (f"invoice-pipeline: process {pid} that ran this run is gone (killed?); marked failed by the "
                   "next CLI run. Its committed batches stay, its cursor did not move: the next run re-reads the window.")
        instance.report_run_failed(run, message)
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        log.warning("run %s (pid %s) died without finishing: marked failed", run.run_id, pid)
        failed.append(run.run_id)
    return failed


@dataclass
class RunReport:
    success: bool
    sources: dict[str, dict] = field(default_factory=dict)  # source name -> materialization metadata
    reconciled: dict[str, dict] = field(default_factory=dict)  # source name -> deletion reconciliation metadata
    failures: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    published: bool = False
    interrupted_at: str | None = None  # the step a Ctrl-C or SIGTERM stopped
    blocking_failed: list[str] = field(default_factory=list)  # warnings never stop a publish


def print_report(report: RunReport) -> None:
    """One line per source run and one per failure (`invoice-pipeline run`, the demo)."""
    header = f"{'source':16s} {'status':8s} {'extracted':>9s} {'loaded':>7s} {'stale':>6s} {'quarant.':>8s} {'API calls':>9s} {'secs':>7s}"
    print(header)
    for name, meta in report.sources.items():
        print(
            f"{name:16s} {'ok':8s} {meta['invoices_extracted']:>9d} {meta['invoices_loaded']:>7d} "
            f"{meta['invoices_stale_skipped']:>6d} {meta['quarantined']:>8d} {meta['api_calls']:>9d} {meta['duration_s']:>7.1f}"
        )
    for failure in report.failures:
        print(f"FAILED: {failure}")


def _root_cause(error) -> str:
    while getattr(error, "cause", None) is not None:
        error = error.cause
    message = error.message.strip()
    # "invoice_pipeline.errors.SourceError: source 'x' ..." -> the part a person needs
    head, _, rest = message.partition(": ")
    if head.endswith(("Error", "Exception")) and "." in head:
        message = rest
    if "No space left on device" in message or "disk is full" in message.lower():
        return f"disk full (free space on the volume of the file named here, or move that path): {message}"
    return message


def reconciliations_due(instance: dg.DagsterInstance, app: AppConfig, sources: list[str],
                        now: datetime | None = None) -> list[str]:
    """Sources whose deletion reconciliation has not run since the last tick of its `reconcile_schedule`.

    So a user who runs `invoice-pipeline run` from cron, without the daemon, gets deletions detected
    on the same cadence the daemon's schedule would give ("always": on every run).
    """
    from dagster._utils.schedules import reverse_cron_string_iterator

    from invoice_pipeline.defs.keys import reconcile_asset_key

    now = now or datetime.now(UTC)
    due = []
    for name in sources:
        cron = app.sources[name].reconcile_schedule
        if cron == "always":
            due.append(name)
            continue
        last = instance.get_latest_materialization_event(reconcile_asset_key(name))
        tick = next(reverse_cron_string_iterator(now.timestamp(), cron, "UTC"))
        if last is None or last.timestamp < tick.timestamp():
            due.append(name)
    return due


def run_pipeline(app: AppConfig, config_path: str, sources: list[str] | None = None, *,
                 reconcile: str = "due", allow_mass_deletion: bool = False,
                 backfill: tuple[str, str] | None = None) -> RunReport:
    """Materialize the chosen sources (all by default), the conformed model, its checks and publish.

    reconcile: "due" adds the deletion reconciliations whose schedule says they are due; "only" runs
    just the reconciliations (no extraction) and what follows them (`invoice-pipeline reconcile`).
    backfill: (start, end) ISO timestamps, the source assets' launchpad config `backfill: {start, end}`
    (`invoice-pipeline run --from --to`): re-read that window, never moving the cursor.
    """
    # With the Iceberg backend the same job runs over the Iceberg graph (defs/iceberg_assets.py): re-poll,
    # deletion reconciliation and history as with DuckDB (docs/ICEBERG.md).
    iceberg = app.warehouse.backend == "iceberg"
    from invoice_pipeline.defs import build_definitions
    from invoice_pipeline.defs.catalog import plain_value
    from invoice_pipeline.defs.keys import (ALL_ASSETS_JOB, CONFORMED_ASSET_KEYS, PUBLISHED_KEY, lifecycle_asset_keys,
                                            reconcile_asset_key, source_asset_key)

    ensure_dagster_home(None if iceberg else Path(app.warehouse.duckdb_path))
    defs = build_definitions(app, config_path, write_pool=None)  # no pool slot a killed run could keep
    selected = sources or list(app.sources)
    job = defs.resolve_job_def(ALL_ASSETS_JOB)
    # Creating a fresh instance's SQLite storage is not safe from two processes at once: serialise it.
    with FileLock(str(Path(os.environ["DAGSTER_HOME"]) / ".instance.lock")):
        instance = dg.DagsterInstance.get()
    with instance:
        fail_dead_cli_runs(instance)
        if reconcile == "only":
            selection = [reconcile_asset_key(s) for s in selected] + lifecycle_asset_keys([])
            reconciled = selected
        else:
            selection = [source_asset_key(s) for s in selected]
            # re-poll open invoices, record history (with Iceberg the history is written by the loads)
            selection += lifecycle_asset_keys(selected)
            reconciled = reconciliations_due(instance, app, selected)
            selection += [reconcile_asset_key(s) for s in reconciled]
            if reconciled:
                log.info("deletion reconciliation due for %s (config key reconcile_schedule)", ", ".join(reconciled))
        selection += [*CONFORMED_ASSET_KEYS, PUBLISHED_KEY]
        ops = {reconcile_asset_key(s).to_python_identifier(): {"config": {"allow_mass_deletion": True}}
               for s in reconciled} if allow_mass_deletion else {}
        if backfill is not None and reconcile != "only":
            ops.update({source_asset_key(s).to_python_identifier(): {"config": {"backfill": {"start": backfill[0], "end": backfill[1]}}}
                        for s in selected})
        tags = {CONFIG_TAG: str(Path(config_path).resolve()),
                WAREHOUSE_TAG: app.warehouse.iceberg.warehouse if iceberg else str(Path(app.warehouse.duckdb_path).resolve()),
                **process_tags()}
        result = job.execute_in_process(
            instance=instance,
            asset_selection=selection,
            tags=tags,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}, **({"ops": ops} if ops else {})},
        )
    report = RunReport(success=result.success)
    for event in result.all_events:
        if event.is_step_materialization:
            mat = event.event_specific_data.materialization
            key = mat.asset_key
            for name in app.sources:
                if key == source_asset_key(name):
                    report.sources[name] = {k: plain_value(v) for k, v in mat.metadata.items()}
                elif key == reconcile_asset_key(name):
                    report.reconciled[name] = {k: plain_value(v) for k, v in mat.metadata.items()}
            if key == PUBLISHED_KEY:
                report.published = True
        elif event.is_step_failure:
            error = event.step_failure_data.error
            if error is not None and error.cls_name == "DagsterExecutionInterruptedError":
                report.interrupted_at = report.interrupted_at or event.step_key
                continue
            report.failures.append(f"step {event.step_key}: {_root_cause(error)}")
        elif event.event_type_value == "RESOURCE_INIT_FAILURE":  # no step ran: say why
            report.failures.append(f"setting up the run: {_root_cause(event.event_specific_data.error)}")
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            report.checks[evaluation.check_name] = evaluation.passed
            if evaluation.blocking and not evaluation.passed:
                report.blocking_failed.append(evaluation.check_name)
    if report.blocking_failed and not report.published:
        report.failures.append(f"blocking checks failed, nothing published: {', '.join(report.blocking_failed)}")
    report.success = report.success and not report.failures
    return report
