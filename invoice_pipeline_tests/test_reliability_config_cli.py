"""Bad configuration through the real CLI (a subprocess): one clear message, non-zero exit, no traceback.

Every wrong or missing key and unknown source type must name the source and key, and never print
a stack trace or a secret. Unreachable base URLs and wrong credentials need a running pipeline:
test_reliability_secrets.py runs those through the same CLI (and greps the result for secrets).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml


PASSWORD = "Cfg-Secret-9f3a!"  # long enough that redaction cannot hit ordinary words


def run_cli(tmp_path: Path, config: Any, *extra: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    environ = {k: v for k, v in os.environ.items() if k != "INVOICE_PIPELINE_CONFIG"}
    environ.update(DAGSTER_HOME=str(tmp_path / "dagster_home"), **(env or {}))
    return subprocess.run([sys.executable, "-m", "invoice_pipeline.cli", "run", "--config", str(path), *extra],
                          cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=timeout)


def warehouse(tmp_path: Path) -> dict[str, str]:
    return {"duckdb_path": str(tmp_path / "w.duckdb"), "published_path": str(tmp_path / "pub" / "w.duckdb"),
            "parquet_dir": str(tmp_path / "parquet")}


def oracle_block(**changes: Any) -> dict[str, Any]:
    block = {"type": "oracle_occ", "base_url": "http://127.0.0.1:9", "username": "integration",
             "password": PASSWORD, "start_date": "2024-01-01T00:00:00Z"}
    block.update(changes)
    return {k: v for k, v in block.items() if v is not None}


def assert_clean_failure(result: subprocess.CompletedProcess[str], code: int, *must: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert "Traceback" not in output and 'File "' not in output, output
    assert PASSWORD not in output
    for text in must:
        assert text in output, (text, output)
    return output


CONFIG_ERRORS = {
    # case: (source block changes, texts the one message must contain)
    "missing key": ({"password": None}, ["config key 'sources.us.password'", "required"]),
    "unknown key": ({"passwrd": "x"}, ["config key 'sources.us.passwrd'", "not permitted"]),
    "wrong type": ({"concurrency": "many"}, ["config key 'sources.us.concurrency'"]),
    "bad url": ({"base_url": "ftp//nowhere"}, ["config key 'sources.us.base_url'", "not an http(s) URL"]),
    "bad date": ({"start_date": "0000-00-00"}, ["config key 'sources.us.start_date'"]),
    "unknown type": ({"type": "oracle"}, ["config key 'sources.us.type'", "unknown source type 'oracle'"]),
    "missing env var": ({"password": "${RELIABILITY_UNSET_VAR}"},
                        ["config key 'sources.us.password'", "RELIABILITY_UNSET_VAR is not set"]),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_each_configuration_error_is_one_clear_line(tmp_path: Path, case: str) -> None:
    changes, must = CONFIG_ERRORS[case]
    result = run_cli(tmp_path, {"warehouse": warehouse(tmp_path), "sources": {"us": oracle_block(**changes)}})
    assert_clean_failure(result, 2, "invoice-pipeline: configuration error:", *must)
    assert len(result.stderr.strip().splitlines()) == 1  # one paragraph, nothing else
    assert not (tmp_path / "w.duckdb").exists()  # nothing ran


def test_missing_file_bad_yaml_and_unknown_source_option(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if k != "INVOICE_PIPELINE_CONFIG"}
    missing = subprocess.run([sys.executable, "-m", "invoice_pipeline.cli", "run", "--config", "nope.yaml"],
                             cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=60)
    assert_clean_failure(missing, 2, "config file nope.yaml not found")
    assert_clean_failure(run_cli(tmp_path, "sources: [unclosed"), 2, "not valid YAML")
    duplicate = "sources:\n  us: {type: oracle_occ}\n  us: {type: crmcom}\n"
    assert_clean_failure(run_cli(tmp_path, duplicate), 2, "key 'us' appears twice")
    good = {"warehouse": warehouse(tmp_path), "sources": {"us": oracle_block()}}
    assert_clean_failure(run_cli(tmp_path, good, "--source", "eu"), 2, "--source eu: not in")
