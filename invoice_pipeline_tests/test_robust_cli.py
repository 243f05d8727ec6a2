"""Issue 19 through the `invoice-pipeline` CLI (a subprocess): a login that echoes the form body
back leaks no encoding of the password; a hostile `timeout: 0` is refused naming the key."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, quote_plus, urlencode

import duckdb
import yaml

from invoice_pipeline.simulation import SimRequest, SimResponse
from invoice_pipeline.sources.oracle_occ.simulator import SIMULATOR_CLASS as OracleSim

SECRET = "pw-SECRET-123!/ +\u00e9"


class EchoingLogin(OracleSim):
    """A login endpoint answering 400 with what it received: the form, then the password as a JSON
    string and the user:password pair in base64, as some APIs put in their error pages."""

    def handle(self, request: SimRequest) -> SimResponse:
        if request.path.rstrip("/").endswith("/login"):
            echo = (b"bad request: " + request.body + b" password=" + json.dumps(SECRET).encode()
                    + b" basic=" + base64.b64encode(f"{self.username}:{SECRET}".encode()))
            return SimResponse(400, echo, {"Content-Type": "text/plain"})
        return super().handle(request)


def _cli(tmp_path: Path, sources: dict, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    data = tmp_path / "data"
    config = {"warehouse": {"duckdb_path": str(data / "warehouse.duckdb"),
                            "published_path": str(data / "published" / "w.duckdb"),
                            "parquet_dir": str(data / "parquet")}, "sources": sources}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "INVOICE_PIPELINE_CONFIG"}
    env.update(env_extra, DAGSTER_HOME=str(data / "dagster_home"))
    cli = [sys.executable, "-m", "invoice_pipeline.cli", "-v", "run", "--config", str(tmp_path / "config.yaml")]
    return subprocess.run(cli, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)


def test_a_password_echoed_back_leaks_in_no_encoding(tmp_path: Path) -> None:
    with EchoingLogin(size=5) as sim:
        block = {**sim.source_config(), "password": "${ROBUST_OCC_PASSWORD}", "max_retries": 0}
        done = _cli(tmp_path, {"occ": block}, {"ROBUST_OCC_PASSWORD": SECRET})
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED") and "source 'occ'" in line]
    assert failed and "HTTP 400" in failed[0] and "bad request: grant_type=password" in failed[0], output
    forms = {
        "raw": SECRET, "form (quote_plus)": quote_plus(SECRET), "quote": quote(SECRET, safe=""),
        "urlencode": urlencode({"password": SECRET}).split("=", 1)[1],
        "json": json.dumps(SECRET)[1:-1], "json (utf-8)": json.dumps(SECRET, ensure_ascii=False)[1:-1],
        "basic": base64.b64encode(f"{sim.username}:{SECRET}".encode()).decode(),
    }
    with duckdb.connect(str(tmp_path / "data" / "warehouse.duckdb"), read_only=True) as con:
        runs = con.execute("select coalesce(error, '') from main._pipeline_runs").fetchall()
    assert runs and all("HTTP 400" in r[0] for r in runs), runs
    haystacks = {"output": output.encode(), "_pipeline_runs.error": "\n".join(r[0] for r in runs).encode()}
    for path in (tmp_path / "data" / "dagster_home").rglob("*"):
        if path.is_file():
            haystacks[str(path)] = path.read_bytes()
    assert any(b"HTTP 400" in text for where, text in haystacks.items() if "dagster_home" in where)
    leaks = [(where, kind) for kind, form in forms.items() for where, text in haystacks.items() if form.encode() in text]
    assert not leaks, leaks


def test_timeout_zero_is_refused_naming_the_key(tmp_path: Path) -> None:
    block = {"type": "oracle_occ", "base_url": "http://127.0.0.1:9", "username": "u", "password": "p",
             "start_date": "2024-01-01T00:00:00Z", "timeout": "0s"}
    done = _cli(tmp_path, {"occ": block}, {})
    output = done.stdout + done.stderr
    assert done.returncode == 2 and "config key 'sources.occ.timeout'" in output and "longer than 0s" in output, output
    assert "Traceback" not in output
