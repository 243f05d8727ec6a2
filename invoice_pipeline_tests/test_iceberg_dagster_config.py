"""The Dagster scale-out settings of the Iceberg backend (deploy/iceberg/, docs/ICEBERG.md) load in this
Dagster, and need no writer pool."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "iceberg"


@pytest.mark.parametrize("name", ["dagster.yaml", "dagster-celery.yaml"])
def test_scale_out_instance_yaml_is_valid_for_this_dagster(tmp_path: Path, name: str) -> None:
    from dagster._core.instance.config import dagster_instance_config

    shutil.copy(DEPLOY / name, tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))  # what the webserver and the daemon do at start
    assert config["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["concurrency"]["runs"]["max_concurrent_runs"] > 1
    assert "pools" not in config["concurrency"]  # no duckdb_write pool: Iceberg commits need no lock
    if name == "dagster.yaml":
        assert (config["run_launcher"]["module"], config["run_launcher"]["class"]) == ("dagster_k8s", "K8sRunLauncher")
        assert {"job_namespace", "env_secrets"} <= set(config["run_launcher"]["config"])
        try:
            from dagster_k8s import K8sRunLauncher
        except ImportError:
            return
        from dagster._config import process_config

        launcher = process_config(K8sRunLauncher.config_type(), config["run_launcher"]["config"])
        assert launcher.success, launcher.errors


def test_executor_run_configs_load() -> None:
    k8s = yaml.safe_load((DEPLOY / "run_config_k8s.yaml").read_text())["execution"]["config"]
    assert k8s["max_concurrent"] >= 4 and k8s["env_secrets"]
    celery = yaml.safe_load((DEPLOY / "run_config_celery.yaml").read_text())["execution"]["config"]
    assert celery["broker"] == {"env": "DAGSTER_CELERY_BROKER_URL"}


def test_executor_run_configs_match_the_executors_schema_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked against dagster-k8s / dagster-celery themselves (the `scaleout` extra)."""
    from dagster._config import process_config

    monkeypatch.setenv("DAGSTER_CELERY_BROKER_URL", "pyamqp://guest@rabbitmq//")
    monkeypatch.setenv("DAGSTER_CELERY_BACKEND_URL", "rpc://")

    checked = 0
    for module, attr, name in (("dagster_k8s", "k8s_job_executor", "run_config_k8s.yaml"),
                               ("dagster_celery", "celery_executor", "run_config_celery.yaml")):
        try:
            executor = getattr(__import__(module), attr)
        except ImportError:
            continue
        config = yaml.safe_load((DEPLOY / name).read_text())["execution"]["config"]
        result = process_config(executor.config_schema.config_type, config)
        assert result.success, result.errors
        checked += 1
    if not checked:
        pytest.skip("dagster-k8s and dagster-celery (the `scaleout` extra) are not installed")


def test_docs_show_the_scale_out_instance_yaml_verbatim() -> None:
    docs = (REPO / "docs" / "ICEBERG.md").read_text()
    blocks = [b for b in re.findall(r"^```yaml\n(.*?)^```", docs, flags=re.S | re.M) if "K8sRunLauncher" in b]
    assert blocks and blocks[0] == (DEPLOY / "dagster.yaml").read_text()
