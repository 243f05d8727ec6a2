"""A full disk is named as the cause, through the CLI, wherever it strikes.

A small tmpfs stands in for a full volume (needs root, as CI runs; skipped with the reason elsewhere).
Before: DuckDB's aborted transaction surfaced as "cannot rollback - no transaction is active", and a
failed publish was reported as "blocking checks failed" naming a check that only warns.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from invoice_pipeline.simulate import config_document, start_simulators


@pytest.fixture
def small_volume(tmp_path: Path):
    volume = tmp_path / "small"
    volume.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=768k", "tmpfs", str(volume)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {proc.stderr.strip()}")
    yield volume
    subprocess.run(["umount", "-l", str(volume)], check=False)


def _run(tmp_path: Path, warehouse: dict) -> subprocess.CompletedProcess:
    with ExitStack() as stack:
        sims = start_simulators(stack, size=40, types=["oracle_occ", "agvance"])
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({**config_document(sims), "warehouse": warehouse}))
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("INVOICE_PIPELINE_")},
               "DAGSTER_HOME": str(tmp_path / "dagster_home")}
        return subprocess.run([sys.executable, "-m", "invoice_pipeline.cli", "run", "--config", str(config)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_publish_on_a_full_disk_names_the_disk_not_a_check(tmp_path: Path, small_volume: Path) -> None:
    proc = _run(tmp_path, {"duckdb_path": str(tmp_path / "warehouse.duckdb"),
                           "published_path": str(small_volume / "published.duckdb"),
                           "parquet_dir": str(small_volume / "parquet")})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "FAILED: step published__warehouse: disk full" in out, out[-3000:]
    assert "blocking checks failed" not in out and "cannot rollback" not in out, out[-3000:]


def test_loading_on_a_full_disk_names_the_disk(tmp_path: Path, small_volume: Path) -> None:
    proc = _run(tmp_path, {"duckdb_path": str(small_volume / "warehouse.duckdb"),
                           "published_path": str(tmp_path / "published.duckdb"),
                           "parquet_dir": str(tmp_path / "parquet")})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "disk full" in out, out[-3000:]
    assert "cannot rollback" not in out and "no transaction is active" not in out, out[-3000:]
