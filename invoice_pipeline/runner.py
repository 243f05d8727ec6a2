"""Runs the Dagster definitions in-process for the CLI, on a persistent instance, and reports."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from filelock import FileLock

from invoice_pipeline.config import AppConfig
from invoice_pipeline.conformed import CONFORMED_TABLES

DAGSTER_YAML = """\
# Written by invoice-pipeline: a persistent local instance (run history, schedules, pool limits).
concurrency:
  pools:
    default_limit: 1
telemetry:
  enabled: false
python_logs:
  # progress lines of the pipeline's own loggers show in the run logs of the UI
  managed_python_loggers:
    - invoice_pipeline
  python_log_level: INFO
"""


def ensure_dagster_home(default: Path = Path("data/dagster_home")) -> Path:
    """DAGSTER_HOME if set, else data/dagster_home with a dagster.yaml (FACTS: must be absolute)."""
    home = Path(os.environ.get("DAGSTER_HOME") or default).resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


@dataclass
class RunReport:
    success: bool
    sources: dict[str, dict] = field(default_factory=dict)  # source name -> materialization metadata
    failures: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    published: bool = False


def _root_cause(error) -> str:
    while getattr(error, "cause", None) is not None:
        error = error.cause
    message = error.message.strip()
    # "invoice_pipeline.errors.SourceError: source 'x' ..." -> the part a person needs
    head, _, rest = message.partition(": ")
    return rest if head.endswith("Error") and "." in head else message


def run_pipeline(app: AppConfig, config_path: str, sources: list[str] | None = None) -> RunReport:
    from invoice_pipeline.defs import ALL_ASSETS_JOB, build_definitions
    from invoice_pipeline.defs.lifecycle import lifecycle_asset_keys

    ensure_dagster_home()
    defs = build_definitions(app, config_path)
    selected = sources or list(app.sources)
    selection = [dg.AssetKey([s, "invoices"]) for s in selected]
    selection += lifecycle_asset_keys(selected)  # re-poll open invoices, record history
    selection += [dg.AssetKey(["main", t]) for t in CONFORMED_TABLES] + [dg.AssetKey(["published", "warehouse"])]
    job = defs.resolve_job_def(ALL_ASSETS_JOB)
    # Creating a fresh instance's SQLite storage is not safe from two processes at once: serialise it.
    with FileLock(str(Path(os.environ["DAGSTER_HOME"]) / ".instance.lock")):
        instance = dg.DagsterInstance.get()
    with instance:
        result = job.execute_in_process(
            instance=instance,
            asset_selection=selection,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
        )
    report = RunReport(success=result.success)
    for event in result.all_events:
        if event.is_step_materialization:
            mat = event.event_specific_data.materialization
            key = mat.asset_key.path
            if len(key) == 2 and key[1] == "invoices" and key[0] in app.sources:
                report.sources[key[0]] = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
            if key == ["published", "warehouse"]:
                report.published = True
        elif event.is_step_failure:
            report.failures.append(f"step {event.step_key}: {_root_cause(event.step_failure_data.error)}")
        elif event.event_type_value == "RESOURCE_INIT_FAILURE":  # no step ran: say why
            report.failures.append(f"setting up the run: {_root_cause(event.event_specific_data.error)}")
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            report.checks[evaluation.check_name] = evaluation.passed
    failed_checks = [name for name, ok in report.checks.items() if not ok]
    if failed_checks and not report.published:
        report.failures.append(f"blocking checks failed, nothing published: {', '.join(failed_checks)}")
    report.success = report.success and not report.failures
    return report
