"""`invoice-pipeline simulate`: the config it writes is what the Dagster definitions load, and it works."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import dagster as dg
import pytest
import requests
import yaml

from invoice_pipeline.defs import build_definitions
from invoice_pipeline.defs.keys import ALL_ASSETS_JOB
from invoice_pipeline.defs.loading import resolve_app_config
from invoice_pipeline.simulate import SIMULATE_CONFIG, default_ports, simulator_app_config, start_serving
from invoice_pipeline.simulator_config import demo_source_names
from invoice_pipeline.simulation import Knobs


def _answers(url: str) -> bool:
    """The simulator behind url speaks HTTP (any status: most endpoints want credentials)."""
    session = requests.Session()
    session.trust_env = False
    return session.get(url, timeout=5).status_code > 0


def _assert_instance(home: Path) -> None:
    instance = yaml.safe_load((home / "dagster.yaml").read_text())
    assert instance["concurrency"]["pools"]["default_limit"] == 1
    assert "invoice_pipeline" in instance["python_logs"]["managed_python_loggers"]


def test_simulate_config_is_what_the_definitions_load(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAGSTER_HOME")  # as on a fresh clone: simulate creates data/dagster_home
    with ExitStack() as stack:
        sims = start_serving(stack, size=20, knobs=Knobs(), ports={t: 0 for t in default_ports()})
        assert (in_tmp / SIMULATE_CONFIG).is_file()
        _assert_instance(in_tmp / "data" / "dagster_home")
        assert os.environ["DAGSTER_HOME"] == str((in_tmp / "data" / "dagster_home").resolve())

        # No invoice_pipeline.yaml here: the definitions take data/simulate.yaml, i.e. these simulators.
        app = resolve_app_config()
        assert sorted(app.sources) == sorted(sims) == sorted(demo_source_names().values())
        for name, sim in sims.items():
            assert app.sources[name].base_url.rstrip("/") == sim.base_url.rstrip("/")
            assert app.sources[name].type == type(sim).__module__.split(".")[-2]
        defs = build_definitions(app)
        dg.Definitions.validate_loadable(defs)
        keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
        assert {f"{name}/invoices" for name in sims} <= keys

        # And the pipeline runs against them through those definitions.
        result = defs.resolve_job_def(ALL_ASSETS_JOB).execute_in_process(
            instance=dg.DagsterInstance.ephemeral(), asset_selection=[dg.AssetKey(["swo", "invoices"])])
        assert result.success
        meta = result.asset_materializations_for_node("swo__invoices")[0].metadata
        assert meta["invoices_loaded"].value == 20


def test_without_a_written_config_the_definitions_expect_the_fixed_ports(in_tmp: Path) -> None:
    app = simulator_app_config()
    ports = {cfg.type: int(str(cfg.base_url).split(":")[2].split("/")[0]) for cfg in app.sources.values()}
    assert ports == default_ports()
    # Each simulator declares its port (`default_port`): the ones docs/OPERATIONS.md tells users.
    assert default_ports() == {"oracle_occ": 8701, "crmcom": 8702, "softwareone": 8703, "agvance": 8704}


def _ports_free() -> bool:
    for port in default_ports().values():
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def test_simulate_command_serves_on_the_fixed_ports(tmp_path: Path) -> None:
    if not _ports_free():
        pytest.skip(f"ports {sorted(default_ports().values())} are taken (another `invoice-pipeline simulate`?)")
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "INVOICE_PIPELINE_CONFIG")}
    proc = subprocess.Popen([sys.executable, "-u", "-m", "invoice_pipeline.cli", "simulate", "--size", "10"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = []
        for line in proc.stdout:
            out.append(line)
            if line.startswith("Ctrl-C"):
                break
        assert proc.poll() is None, "".join(out)
        printed = "".join(out)
        home = (tmp_path / "data" / "dagster_home").resolve()
        assert f"export DAGSTER_HOME={home}" in printed
        _assert_instance(home)
        written = yaml.safe_load((tmp_path / SIMULATE_CONFIG).read_text())
        names = demo_source_names()
        for type_name, port in default_ports().items():
            block = written["sources"][names[type_name]]
            assert block["type"] == type_name and f"127.0.0.1:{port}" in block["base_url"]
            assert block["base_url"] in printed
            assert _answers(block["base_url"])
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
