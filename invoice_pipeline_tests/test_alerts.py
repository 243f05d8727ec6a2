"""Webhook alerts from Dagster run status sensors, posted to a local HTTP receiver: a failed run, a run
whose blocking checks failed (nothing published), the config key, and the URL never in a log line."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml
from dagster._core.events import DagsterEventType

from invoice_pipeline.config import AlertsConfig, parse_config
from invoice_pipeline.defs import build_definitions
from invoice_pipeline.defs.alerts import build_alert_sensors, post_alert
from invoice_pipeline.defs.keys import source_job_name
from invoice_pipeline.errors import ConfigError
from invoice_pipeline.runner import run_pipeline
from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

from .conftest import write_app_config
from .fake_source import fake_config_block

ENV = "TEST_ALERT_WEBHOOK"
TOKEN = "T000/B000/s3cret-webhook-token"


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict]]:
    """A Slack-like webhook on an ephemeral port; the URL (with its token) in $TEST_ALERT_WEBHOOK."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, "type": self.headers["Content-Type"], "json": json.loads(body)})
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(ENV, f"http://127.0.0.1:{server.server_port}/services/{TOKEN}")
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()


def _sensor(defs: dg.Definitions, name: str):
    return next(s for s in defs.sensors if s.name == name)


def _context(defs: dg.Definitions, instance: dg.DagsterInstance, run_id: str, event_type: DagsterEventType):
    event = instance.get_records_for_run(run_id, of_type=event_type).records[0].event_log_entry.dagster_event
    return dg.build_run_status_sensor_context(
        sensor_name="alert", dagster_event=event, dagster_instance=instance,
        dagster_run=instance.get_run_by_id(run_id), repository_def=defs.get_repository_def())


def test_a_failed_run_is_posted_once_with_its_cause(in_tmp: Path, receiver: list[dict],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    dead = {**fake_config_block(), "max_retries": 0, "timeout": "2s"}  # nothing listens on port 9
    doc = {"sources": {"acme": dead}, "alerts": {"webhook_url_env": ENV},
           "warehouse": {"duckdb_path": str(in_tmp / "w.duckdb"), "published_path": str(in_tmp / "p.duckdb"),
                         "parquet_dir": str(in_tmp / "parquet")}}
    (in_tmp / "cfg.yaml").write_text(yaml.safe_dump(doc))
    defs = build_definitions(parse_config(doc), str(in_tmp / "cfg.yaml"))
    assert {"alert_run_failure", "alert_blocking_checks"} <= {s.name for s in defs.sensors}
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def(source_job_name("acme")).execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        context = _context(defs, instance, result.run_id, DagsterEventType.RUN_FAILURE).for_run_failure()
        with caplog.at_level(logging.DEBUG):
            _sensor(defs, "alert_run_failure")(context)
    (alert,) = receiver
    assert alert["type"] == "application/json" and alert["path"] == f"/services/{TOKEN}"
    text = alert["json"]["text"]
    assert text.startswith(f"invoice-pipeline: run {result.run_id} of job acme_incremental (source acme) failed: "
                           "step acme__invoices: SourceError"), text
    assert TOKEN not in caplog.text


def test_blocking_checks_that_failed_are_posted(in_tmp: Path, receiver: list[dict]) -> None:
    with SIMULATOR_CLASS(size=20) as sim:
        app, path = write_app_config(in_tmp, {"agv": sim.source_config()})
        assert run_pipeline(app, str(path)).success
        with duckdb.connect(str(in_tmp / "warehouse.duckdb")) as con:  # a line without its invoice: a blocking rule fails
            con.execute("INSERT INTO main.invoice_lines SELECT * REPLACE ('ghost-1' AS invoice_id) "
                        "FROM main.invoice_lines LIMIT 1")
        report = run_pipeline(app, str(path))
    assert "orphans_invoice_lines" in report.blocking_failed and not report.published
    alerts = AlertsConfig(webhook_url_env=ENV)
    defs = build_definitions(app.model_copy(update={"alerts": alerts}), str(path))
    with dg.DagsterInstance.get() as instance:
        run = instance.get_runs(limit=1)[0]
        assert run.status == dg.DagsterRunStatus.FAILURE  # a failed blocking check fails the run
        context = _context(defs, instance, run.run_id, DagsterEventType.RUN_FAILURE).for_run_failure()
        _sensor(defs, "alert_run_failure")(context)
        only_checks = AlertsConfig(webhook_url_env=ENV, on_run_failure=False)
        only_checks_defs = build_definitions(app.model_copy(update={"alerts": only_checks}), str(path))
        _sensor(only_checks_defs, "alert_run_failure")(context)
        # the success-status sensor reads the same evaluations (for a run that would end well)
        _sensor(defs, "alert_blocking_checks")(_context(defs, instance, run.run_id, DagsterEventType.RUN_FAILURE))
    (alert, checks_only, from_success_sensor) = receiver
    assert from_success_sensor["json"] == checks_only["json"]
    assert checks_only["json"]["text"].startswith(f"invoice-pipeline: run {run.run_id} of job invoice_pipeline_job: "
                                                  "blocking checks failed, nothing published: orphans_invoice_lines")
    text = alert["json"]["text"]
    assert text.startswith(f"invoice-pipeline: run {run.run_id} of job invoice_pipeline_job failed: ")
    assert "blocking checks failed, nothing published: " in text and "orphans_invoice_lines (main/invoices)" in text
    assert "agv/ghost-1" in text  # names the offending invoice


def test_no_alerts_block_no_alert_sensors_and_bad_keys_are_named(in_tmp: Path) -> None:
    app, _ = write_app_config(in_tmp, {"a": fake_config_block()})
    assert app.alerts is None and build_alert_sensors(None) == []
    assert not any(s.name.startswith("alert_") for s in build_definitions(app).sensors)
    with pytest.raises(ConfigError, match="config key 'alerts.webhook_url_env'"):
        parse_config({"sources": {"a": fake_config_block()}, "alerts": {"webhook_url_env": "https://hooks.example/x"}})
    with pytest.raises(ConfigError, match="config key 'alerts.url'"):
        parse_config({"sources": {"a": fake_config_block()}, "alerts": {"webhook_url_env": ENV, "url": "x"}})


def test_unset_variable_or_failing_webhook_logs_the_variable_never_the_url(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    alerts = AlertsConfig(webhook_url_env=ENV, timeout="2s")
    monkeypatch.delenv(ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="invoice_pipeline.alerts"):
        assert not post_alert(alerts, "x")
        monkeypatch.setenv(ENV, f"http://127.0.0.1:9/{TOKEN}")  # nothing listens there
        assert not post_alert(alerts, "x")
    assert f"environment variable {ENV} (alerts.webhook_url_env) is not set" in caplog.text
    assert f"the webhook in ${ENV} failed" in caplog.text and TOKEN not in caplog.text
