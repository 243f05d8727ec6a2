"""Many machines on one: PostgreSQL as the Iceberg catalog, a local S3 (moto) as storage, the four
sources loaded by four separate processes at the same time, then audit + publish over the union."""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from .iceberg_support import duplicates, iceberg_app, ingest, published

SOURCES = {"ora": "oracle_occ", "crm": "crmcom", "swo": "softwareone", "agv": "agvance"}
SIZE = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _sudo() -> list[str] | None:
    """[] as root, ["sudo", "-n"] with password-less sudo, else None."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def _install_postgres() -> Path | None:
    """The Debian package, as scripts/production_recipe.sh installs it (root or sudo)."""
    sudo = _sudo()
    if _pg_bin() is None and sudo is not None and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"]
        if subprocess.run(install, capture_output=True, timeout=600, env=env).returncode != 0:
            subprocess.run([*sudo, "apt-get", "update", "-qq"], capture_output=True, timeout=600, env=env)
            subprocess.run(install, capture_output=True, timeout=600, env=env)
    return _pg_bin()


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):  # as test_production_recipe.py: CI must run it
        pytest.fail(f"CI is set but {reason}")
    pytest.skip(reason)


@pytest.fixture
def postgres() -> Iterator[str]:
    """A throw-away PostgreSQL cluster on a free port; yields host:port of a database `iceberg`
    (user `pipeline`, trust authentication on loopback)."""
    pg = _install_postgres()
    if pg is None:
        _unavailable("PostgreSQL is not installed and cannot be installed here (needs root or sudo, and apt-get)")
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="iceberg-pg-"))
    if os.geteuid() == 0:  # postgres refuses to run as root
        try:
            shutil.chown(base, "postgres", "postgres")
        except (LookupError, OSError):
            _unavailable("running as root without a `postgres` system user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", _free_port()
    try:
        subprocess.run([*as_user, str(pg / "initdb"), "-D", str(data), "-A", "trust", "-U", "pipeline", "--no-sync"],
                       check=True, capture_output=True, timeout=120)
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60"
        subprocess.run([*as_user, str(pg / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "log"), "-w",
                        "start"], check=True, capture_output=True, timeout=120)
        try:
            import psycopg2

            con = psycopg2.connect(host="127.0.0.1", port=port, user="pipeline", dbname="postgres")
            con.autocommit = True
            con.cursor().execute("CREATE DATABASE iceberg")
            con.close()
            yield f"127.0.0.1:{port}"
        finally:
            subprocess.run([*as_user, str(pg / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3 server on loopback with a bucket, and the AWS_* variables the writers read."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    pafs.S3FileSystem(endpoint_override=endpoint, region="us-east-1", allow_bucket_creation=True).create_dir("lake")
    try:
        yield endpoint
    finally:
        server.stop()


def test_four_sources_in_four_processes_on_postgres_and_s3(tmp_path: Path, postgres: str, s3: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS as Agvance
    from invoice_pipeline.sources.crmcom.simulator import SIMULATOR_CLASS as Crmcom
    from invoice_pipeline.sources.oracle_occ.simulator import SIMULATOR_CLASS as Oracle
    from invoice_pipeline.sources.softwareone.simulator import SIMULATOR_CLASS as SoftwareOne

    monkeypatch.setenv("ICEBERG_PG_PASSWORD", "not-needed-with-trust")  # a password reaches the URI from the env only
    sims = {"ora": Oracle(size=SIZE), "crm": Crmcom(size=SIZE), "swo": SoftwareOne(size=SIZE), "agv": Agvance(size=SIZE)}
    try:
        for sim in sims.values():
            sim.start()
        blocks = {name: {**sim.source_config(), "batch_size": 20} for name, sim in sims.items()}
        iceberg = {"catalog_uri": "postgresql+psycopg2://pipeline:${ICEBERG_PG_PASSWORD}@" + postgres + "/iceberg",
                   "warehouse": "s3://lake/iceberg", "s3_endpoint": s3, "s3_region": "us-east-1"}
        app, config = iceberg_app(tmp_path, blocks, iceberg)
        started = time.monotonic()
        procs = {name: subprocess.Popen(
            [sys.executable, "-m", "invoice_pipeline.iceberg_cli", "load", "--config", str(config), "--source", name],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in SOURCES}
        outputs = {name: p.communicate(timeout=300) for name, p in procs.items()}
        for name, proc in procs.items():
            assert proc.returncode == 0, f"{name}: {outputs[name][1][-3000:]}"
        runs = {name: json.loads(outputs[name][0].strip().splitlines()[-1]) for name in SOURCES}
        assert time.monotonic() - started < 240
    finally:
        for sim in sims.values():
            sim.stop()

    invoices = ingest(app, "main", "invoices")
    for name in SOURCES:  # nothing lost: every invoice each process loaded is there once
        ids = [i for s, i in zip(invoices.column("source_name").to_pylist(), invoices.column("invoice_id").to_pylist(),
                                 strict=True) if s == name]
        assert len(ids) == len(set(ids)) == runs[name]["loaded"] > 0, (name, runs[name])
        raw = ingest(app, name, "_raw_invoices")
        quarantined = set(ingest(app, name, "_quarantine").column("invoice_id").to_pylist())
        assert set(raw.column("invoice_id").to_pylist()) - quarantined == set(ids)
    for table, keys in {"invoices": ["source_name", "invoice_id"], "invoice_lines": ["source_name", "invoice_id", "line_id"],
                        "invoice_tax_lines": ["source_name", "invoice_id", "tax_line_id"],
                        "invoice_installments": ["source_name", "invoice_id", "installment_id"]}.items():
        assert duplicates(ingest(app, "main", table), keys) == 0, table
    assert sorted(r["source_name"] for r in ingest(app, "main", "_pipeline_cursors").to_pylist()) == sorted(SOURCES)
    assert published(app, "main", "invoices").num_rows == 0  # readers see nothing before the audit

    done = subprocess.run([sys.executable, "-m", "invoice_pipeline.iceberg_cli", "publish", "--config", str(config)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["published"] and result["rows"]["invoices"] == invoices.num_rows
    for table in ("invoices", "invoice_lines", "invoice_tax_lines", "invoice_installments"):
        assert published(app, "main", table).num_rows == ingest(app, "main", table).num_rows > 0, table
    by_source = published(app, "main", "invoices").group_by("source_name").aggregate([("invoice_id", "count")])
    assert dict(zip(by_source.column(0).to_pylist(), by_source.column(1).to_pylist(), strict=True)) == {
        name: runs[name]["loaded"] for name in SOURCES}
