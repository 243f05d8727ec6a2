"""A new source = one folder + one registry line, proven with a source the repository does not ship.

invoice_pipeline_tests/fakebill/ is a complete minimal source (client, mapping, simulator). Its only
registration is one entry point, `fakebill = "invoice_pipeline_tests.fakebill"` in the group
`invoice_pipeline.source_types`, written here into a dist-info folder exactly as installing a
distribution that declares it in its pyproject.toml would. With that folder on the path, the CLI, the
demo and the Dagster code location take the source like a built-in one; without it, it is unknown.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from invoice_pipeline import source_types
from invoice_pipeline.config import parse_config
from invoice_pipeline.demo import CHANGE_KINDS, MUTATIONS
from invoice_pipeline.errors import ConfigError
from invoice_pipeline.simulator_config import default_ports, demo_source_names

from .fakebill.simulator import FakebillSimulator

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = f"[{source_types.ENTRY_POINT_GROUP}]\nfakebill = invoice_pipeline_tests.fakebill\n"


def _install_plugin(where: Path) -> Path:
    """What `pip install` of a distribution declaring the entry point leaves on the path."""
    info = where / "invoice_pipeline_fakebill-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: invoice-pipeline-fakebill\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return where


@pytest.fixture
def plugin_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a user's shell in which the plugin is installed (for subprocesses)."""
    plugins = _install_plugin(tmp_path / "site")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOICE_PIPELINE_") and k != "DAGSTER_HOME"}
    env["PYTHONPATH"] = os.pathsep.join([str(plugins), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


@pytest.fixture
def plugin_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The plugin installed in this process, forgotten again afterwards."""
    monkeypatch.syspath_prepend(str(_install_plugin(tmp_path / "site")))
    source_types.refresh()
    yield
    monkeypatch.undo()
    source_types.refresh()


def _config(tmp_path: Path, sim: FakebillSimulator, **keys: object) -> Path:
    warehouse = {"duckdb_path": str(tmp_path / "warehouse.duckdb"), "parquet_dir": str(tmp_path / "parquet"),
                 "published_path": str(tmp_path / "published" / "warehouse.duckdb")}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"warehouse": warehouse, "sources": {"fb": {**sim.source_config(), **keys}}}))
    return path


def _fb_rows(tmp_path: Path) -> tuple[int, int]:
    with duckdb.connect(str(tmp_path / "published" / "warehouse.duckdb"), read_only=True) as con:
        return con.execute("SELECT count(*), count(*) FILTER (WHERE is_void) FROM invoices "
                           "WHERE source_name = 'fb' AND source_type = 'fakebill'").fetchone()


def test_without_its_registry_line_the_source_type_is_unknown(tmp_path: Path) -> None:
    source_types.refresh()
    with FakebillSimulator(size=1) as sim, pytest.raises(ConfigError, match="unknown source type 'fakebill'"):
        parse_config({"sources": {"fb": sim.source_config()}})


def test_cli_runs_a_plugin_source(tmp_path: Path, plugin_env: dict[str, str]) -> None:
    """`invoice-pipeline run` twice against the plugin's simulator, one persistent Dagster instance:
    the first run loads everything, the second only what changed (the cursor moved)."""
    home = tmp_path / "dagster_home"
    with FakebillSimulator(size=30) as sim:
        config = _config(tmp_path, sim, batch_size=10)  # batches 2 and 3 prepared in other processes
        run = [sys.executable, "-m", "invoice_pipeline.cli", "run", "--config", str(config)]
        first = subprocess.run(run, cwd=tmp_path, env={**plugin_env, "DAGSTER_HOME": str(home)},
                               capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        assert _fb_rows(tmp_path) == (30, 0)
        changed = sim.mutate(updates=2, new=3, voids=1, seed=3)
        second = subprocess.run(run, cwd=tmp_path, env={**plugin_env, "DAGSTER_HOME": str(home)},
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert _fb_rows(tmp_path) == (33, 1)
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        loaded = [n for (n,) in con.execute("SELECT invoices_loaded FROM main._pipeline_runs "
                                            "WHERE source_name = 'fb' AND mode = 'incremental' ORDER BY started_at").fetchall()]
    assert loaded == [30, len(changed["updated"]) + len(changed["new"]) + len(changed["voided"])]
    with dg.DagsterInstance.from_config(str(home)) as instance:  # both runs are kept in the one instance
        records = instance.fetch_materializations(dg.AssetKey(["fb", "invoices"]), limit=10).records
        assert len(records) == 2 and len(instance.get_run_records()) == 2
        first = records[-1].asset_materialization.metadata  # newest first
        assert first["invoices_loaded"].value == 30
        assert first["source_stats"].value["preparing_processes"] > 0  # the plugin's mapping ran there too


def test_demo_includes_a_plugin_source(tmp_path: Path, plugin_env: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "invoice_pipeline.cli", "demo", "--size", "20"],
                          cwd=tmp_path, env=plugin_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    kinds = r",\s+".join(rf"{k} (\d+)" for k in CHANGE_KINDS)
    lines = [m for m in re.finditer(rf"^  fakebill_demo\s+{kinds}(.*)$", proc.stdout, re.M)]
    assert len(lines) == 2, proc.stdout  # as the simulator reported its changes, as the warehouse shows them
    asked = [MUTATIONS["updates"], MUTATIONS["new"], MUTATIONS["voids"], MUTATIONS["delete_lines"]]
    assert all([int(g) for g in m.groups()[:4]] == asked for m in lines), proc.stdout
    assert "same invoices as the simulator changed" in lines[1].group(5)


def test_dagster_definitions_show_and_materialize_a_plugin_source(
    in_tmp: Path, plugin_here: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert demo_source_names()["fakebill"] == "fakebill_demo" and default_ports()["fakebill"] == 0
    import invoice_pipeline.definitions as code_location

    with FakebillSimulator(size=25) as sim:
        monkeypatch.setenv("INVOICE_PIPELINE_CONFIG", str(_config(in_tmp, sim)))
        defs = code_location.defs()
        keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
        assert {"fb/invoices", "fb/open_invoices_repoll", "fb/deletion_reconciliation"} <= keys
        assert defs.resolve_schedule_def("fb_schedule") is not None
        result = defs.resolve_job_def("fb_incremental").execute_in_process(instance=dg.DagsterInstance.ephemeral())
        assert result.success
        meta = result.asset_materializations_for_node("fb__invoices")[0].metadata
        assert meta["source_type"].value == "fakebill" and meta["invoices_loaded"].value == 25


def test_dry_run_of_a_plugin_source_shows_its_own_calls(tmp_path: Path, plugin_env: dict[str, str]) -> None:
    """`run --dry-run` words each source's calls as the source declares them (Source.describe_calls),
    so a plugin is described like a built-in one, not with a generic sentence."""
    with FakebillSimulator(size=5) as sim:
        config = _config(tmp_path, sim)
        proc = subprocess.run([sys.executable, "-m", "invoice_pipeline.cli", "run", "--dry-run", "--config",
                               str(config)], cwd=tmp_path, env={**plugin_env, "DAGSTER_HOME": str(tmp_path / "dh")},
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert sum(sim.requests.values()) == 0, dict(sim.requests)
    assert "fb (fakebill): incremental window" in proc.stdout, proc.stdout
    assert "calls: pages of GET /v1/invoices?modified_from=" in proc.stdout, proc.stdout
    assert "with the X-Api-Key header" in proc.stdout and "list and detail calls" not in proc.stdout


def test_upgrade_sql_takes_void_statuses_from_each_mapping(plugin_here: None) -> None:
    """upgrade.status_category_sql is built from what each registered mapping declares (VOID_STATUSES,
    DRAFT_STATUSES), a plugin's too; a type declaring none is void by its stored is_void."""
    from invoice_pipeline.upgrade import status_category_sql

    rows = [("fakebill", "void", False, 5), ("fakebill", "open", True, 5), ("crmcom", "DRAFT", False, 5),
            ("crmcom", "REJECTED", False, 0), ("gone_type", "x", True, 0), ("gone_type", "x", False, 0)]
    values = ", ".join(f"('{t}', '{s}', {str(v).lower()}, {b})" for t, s, v, b in rows)
    with duckdb.connect() as con:
        got = [c for (c,) in con.execute(f"SELECT {status_category_sql()} FROM (VALUES {values}) "
                                         "AS t(source_type, status, is_void, balance_due)").fetchall()]
    assert got == ["void", "open", "draft", "void", "void", "paid"]
