"""No secret ever lands in output, logs, Dagster's event logs and metadata, or any file under data/.

Two real `invoice-pipeline run`s (subprocesses, verbose logging, DAGSTER_HOME in tmp): all four
sources with known passwords, API keys and tokens from the environment (loaded and published),
then each of them with a wrong credential plus one whose API is unreachable (each fails with one
clear line naming the source, exit 1, no traceback). Afterwards every byte of output and every
file is searched for the configured secrets and for every token or session id the simulators
issued; DuckDB and Parquet files also through their decoded contents (their pages are compressed).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import yaml

from invoice_pipeline.simulation import Knobs
from invoice_pipeline.sources.agvance import simulator as agv_sim
from invoice_pipeline.sources.crmcom import simulator as crm_sim
from invoice_pipeline.sources.oracle_occ.simulator import SIMULATOR_CLASS as OracleSim
from invoice_pipeline.sources.softwareone.simulator import SIMULATOR_CLASS as SwoSim

SECRETS = {
    "RELI_OCC_PASSWORD": "occ-Pa55word-7Q2x",
    "RELI_CRM_PASSWORD": "crm-Pa55word-3Z9v",
    "RELI_SWO_TOKEN": "idt:TKN-4242-4242:0a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "RELI_AGV_API_KEY": "agv-ApiKey-51c2e9d0",
    "RELI_AGV_PASSWORD": "agv-Pa55word-6T4w",
    "RELI_WRONG": "Wrong-Secret-K8m1q",  # sent as password / token / API key where it is refused
}
WRONG = {"occ": "password", "crm": "password", "swo": "api_token", "agv": "api_key"}


def text_of_duckdb(path: Path) -> str:
    """Every text value of every table (and all names) in a DuckDB file."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        parts = []
        tables = con.execute("select table_schema, table_name from information_schema.tables").fetchall()
        for schema, table in tables:
            cols = con.execute("select column_name from information_schema.columns where table_schema=? and table_name=?",
                               [schema, table]).fetchall()
            parts.append(f"{schema}.{table}: " + ",".join(c[0] for c in cols))
            rel = f'"{schema}"."{table}"'.replace("'", "''")
            rows = con.execute(f"select * from {rel}").fetchall()
            parts.extend(repr(r) for r in rows)
        return "\n".join(parts)
    finally:
        con.close()


def text_of_parquet(path: Path) -> str:
    """Every value of a Parquet file, decoded (pyarrow: milliseconds per file, the lake has hundreds)."""
    table = pq.read_table(path)
    return "\n".join([",".join(table.column_names), *(repr(v) for v in table.to_pylist())])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when we return: nothing listens there


@pytest.fixture
def known_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulators accept exactly the secrets above."""
    monkeypatch.setattr(crm_sim, "PASSWORD", SECRETS["RELI_CRM_PASSWORD"])
    monkeypatch.setattr(agv_sim, "API_KEY", SECRETS["RELI_AGV_API_KEY"])
    monkeypatch.setattr(agv_sim, "PASSWORD", SECRETS["RELI_AGV_PASSWORD"])


def test_no_secret_in_output_logs_event_logs_or_files(tmp_path: Path, known_credentials: None) -> None:
    knobs = Knobs(retry_after=0, token_lifetime=None, error_rate=0.02, seed=8)
    oracle, crm = OracleSim(size=40, knobs=knobs), crm_sim.SIMULATOR_CLASS(size=40)
    swo, agv = SwoSim(size=40, knobs=knobs), agv_sim.SIMULATOR_CLASS(size=40, knobs=knobs)
    oracle.password = SECRETS["RELI_OCC_PASSWORD"]
    swo.token = SECRETS["RELI_SWO_TOKEN"]
    sims = (oracle, crm, swo, agv)
    data = tmp_path / "data"
    good_sources = {
        "occ": {**oracle.source_config(), "password": "${RELI_OCC_PASSWORD}"},
        "crm": {**crm.source_config(), "password": "${RELI_CRM_PASSWORD}"},
        "swo": {**swo.source_config(), "api_token": "${RELI_SWO_TOKEN}"},
        "agv": {**agv.source_config(), "api_key": "${RELI_AGV_API_KEY}", "password": "${RELI_AGV_PASSWORD}"},
    }
    bad_sources = {f"bad_{n}": {**block, WRONG[n]: "${RELI_WRONG}", "max_retries": 0} for n, block in good_sources.items()}
    port = _closed_port()
    bad_sources["down"] = {**good_sources["occ"], "base_url": f"http://127.0.0.1:{port}", "max_retries": 0}
    config = {
        "warehouse": {"duckdb_path": str(data / "warehouse.duckdb"), "published_path": str(data / "published" / "w.duckdb"),
                      "parquet_dir": str(data / "parquet")},
        "sources": {**good_sources, **bad_sources},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "INVOICE_PIPELINE_CONFIG"}
    env.update(SECRETS, DAGSTER_HOME=str(data / "dagster_home"))
    cli = [sys.executable, "-m", "invoice_pipeline.cli", "-v", "run", "--config", str(tmp_path / "config.yaml")]
    for sim in sims:
        sim.start()
    try:
        good = subprocess.run([*cli, *(a for n in good_sources for a in ("--source", n))],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
        bad = subprocess.run([*cli, *(a for n in bad_sources for a in ("--source", n))],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    finally:
        for sim in sims:
            sim.stop()
    issued_by = {"occ": list(oracle._tokens), "crm": [*crm.tokens, *crm.released], "agv": list(agv.sessions)}
    assert all(issued_by.values()), issued_by  # tokens and session ids were issued during the run
    issued = [t for tokens in issued_by.values() for t in tokens]

    # the good run loaded and published all four sources
    assert good.returncode == 0, good.stdout + good.stderr
    for name in good_sources:
        assert any(line.startswith(f"{name} ") and " ok " in line for line in good.stdout.splitlines()), good.stdout
    # the bad run: exit 1, one clear line per source saying what to check, no traceback
    bad_output = bad.stdout + bad.stderr
    assert bad.returncode == 1 and "Traceback" not in bad_output and 'File "' not in bad_output, bad_output
    failures = [line for line in bad.stdout.splitlines() if line.startswith("FAILED: step ")]
    by_source = {name: [f for f in failures if f"source '{name}'" in f] for name in bad_sources}
    assert all(len(lines) == 1 for lines in by_source.values()), failures
    assert "connection failed" in by_source["down"][0]
    assert f"check the source's base_url (http://127.0.0.1:{port})" in by_source["down"][0]
    for name in good_sources:
        line = by_source[f"bad_{name}"][0]
        assert "authentication failed" in line or "AUTHENTICATION_FAILED" in line, line
        assert "check the source's credentials" in line or "password" in line, line  # says what to fix
    output = good.stdout + good.stderr + bad_output

    haystacks: dict[str, str] = {"stdout+stderr": output}
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "config.yaml"]
    for path in files:
        haystacks[str(path)] = path.read_bytes().decode("latin-1")
        if path.suffix == ".duckdb":
            haystacks[f"{path} (tables)"] = text_of_duckdb(path)
        elif path.suffix == ".parquet":
            haystacks[f"{path} (rows)"] = text_of_parquet(path)
    kinds = {p.suffix for p in files}
    assert {".duckdb", ".parquet", ".db"} <= kinds, kinds  # warehouse, lake and Dagster's sqlite storage
    assert any("event" in p.name or p.name == "runs.db" for p in files if p.suffix == ".db")
    assert sum("bad_occ" in text for text in haystacks.values()) >= 2  # the failures reached the logs

    needles = {**SECRETS, **{f"issued:{t[:6]}": t for t in issued}}
    leaks = [(where, what) for what, secret in needles.items() for where, text in haystacks.items() if secret in text]
    assert not leaks, leaks
