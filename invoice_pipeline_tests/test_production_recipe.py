"""The production set-up of docs/OPERATIONS.md, run for real.

- scripts/production_recipe.sh end to end in a subprocess: PostgreSQL from Debian, deploy/dagster.yaml,
  dagster-webserver + dagster-daemon, a run launched through GraphQL, found in Postgres' runs table,
  and everything it started stopped again.
- Run monitoring with the shipped instance config (deploy/dagster.yaml without its Postgres storage, so
  SQLite): a run worker SIGKILLed while its run holds the `duckdb_write` pool is marked failed, and
  the run queued behind it starts and completes.
- The docs show deploy/dagster.yaml verbatim.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY_YAML = REPO / "deploy" / "dagster.yaml"
SCRIPT = REPO / "scripts" / "production_recipe.sh"
sys.path.insert(0, str(REPO / "scripts"))
from production_recipe import GraphQL, launch_run, run_status  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, condition: Callable[[], Any], timeout: float, interval: float = 0.5,
          context: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{context()}")


def test_docs_show_the_shipped_dagster_yaml_verbatim() -> None:
    docs = (REPO / "docs" / "OPERATIONS.md").read_text()
    blocks = [b for b in re.findall(r"^```yaml\n(.*?)^```", docs, flags=re.S | re.M) if "postgres_db:" in b]
    assert blocks, "docs/OPERATIONS.md has no yaml block with the production dagster.yaml"
    assert blocks[0] == DEPLOY_YAML.read_text(), "docs/OPERATIONS.md's production dagster.yaml differs from deploy/dagster.yaml"


def test_shipped_dagster_yaml_is_valid_for_this_dagster() -> None:
    """Every key is one Dagster 1.13 accepts (a stale key stops dagster-daemon at start)."""
    from dagster._core.instance.config import dagster_instance_config

    # What `dagster-daemon run` does first: the schema, and e.g. run limits in two places rejected.
    config, _ = dagster_instance_config(str(DEPLOY_YAML.parent))
    assert config["concurrency"] == {"runs": {"max_concurrent_runs": 8}, "pools": {"granularity": "run", "default_limit": 1}}
    assert config["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    monitoring = yaml.safe_load(DEPLOY_YAML.read_text())["run_monitoring"]
    assert monitoring["enabled"] and monitoring["max_resume_run_attempts"] == 0
    assert monitoring["free_slots_after_run_end_seconds"] > 0


# -- the recipe, end to end ---------------------------------------------------------------------

def _require_root_or_sudo() -> None:
    if os.geteuid() == 0:
        return
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return
    reason = "the production recipe installs and starts PostgreSQL: needs root or password-less sudo"
    if IN_CI:
        pytest.fail(f"CI is set but {reason}")
    pytest.skip(reason)


def _clusters() -> str | None:
    """`pg_lsclusters` as it stands (None when PostgreSQL is not installed)."""
    if not shutil.which("pg_lsclusters"):
        return None
    return subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout


def test_production_recipe_end_to_end(tmp_path: Path) -> None:
    _require_root_or_sudo()
    name = f"recipe_{uuid.uuid4().hex[:8]}"
    work = tmp_path / "recipe"
    clusters_before = _clusters()
    env = {**os.environ, "RECIPE_WORK_DIR": str(work), "DAGSTER_WEBSERVER_PORT": str(_free_port()),
           "SIM_PORTS": "0", "SIM_SIZE": "25", "DAGSTER_PG_DB": name, "DAGSTER_PG_USER": name,
           # quotes, a backslash, URL delimiters: the password reaches psql and the Dagster URL intact
           "DAGSTER_PG_PASSWORD": f"it's a \\ p@ss:{uuid.uuid4().hex[:6]}",
           "RECIPE_DROP_DB": "1", "RECIPE_TIMEOUT": "200"}
    env.pop("DAGSTER_HOME", None)
    env.pop("INVOICE_PIPELINE_CONFIG", None)
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=420)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]

    run_id = re.search(r"recipe ok: run ([0-9a-f-]{36}) of swo_incremental succeeded and is in Postgres", proc.stdout)
    assert run_id, output[-4000:]
    assert f"Postgres runs table: {run_id.group(1)}|swo_incremental|SUCCESS" in proc.stderr
    # The instance it ran was the shipped file, byte for byte.
    assert (work / "dagster_home" / "dagster.yaml").read_bytes() == DEPLOY_YAML.read_bytes()
    # The rows landed in the warehouse the config named.
    from invoice_pipeline.config import load_config
    from invoice_pipeline.warehouse import Warehouse

    with Warehouse(load_config(work / "invoice_pipeline.yaml").warehouse).reader() as con:
        assert con.execute("SELECT count(*) FROM swo.invoices").fetchone()[0] == 25
    # Everything it started is gone: the services' process groups, with their code servers.
    pids = [int(p) for p in re.findall(r"started \w+ \(pid (\d+)", proc.stderr)]
    assert len(pids) == 3, proc.stderr
    leftovers = [p.pid for p in psutil.process_iter() if _safe_pgid(p.pid) in pids]
    assert not leftovers, f"processes left running: {leftovers}"
    assert env["DAGSTER_PG_PASSWORD"] not in output
    # The cluster is as it was (stopped again if the recipe started it), the throw-away database gone.
    if clusters_before is not None:
        assert _clusters() == clusters_before


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _safe_pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


# -- run monitoring: a killed run's pool slot is freed --------------------------------------------

def shipped_instance_yaml_on_sqlite() -> str:
    """deploy/dagster.yaml with its `storage:` block removed (SQLite under DAGSTER_HOME), the rest verbatim."""
    out, skipping = [], False
    for line in DEPLOY_YAML.read_text().splitlines(keepends=True):
        if line and not line[0].isspace() and not line.startswith("#"):
            skipping = line.startswith("storage:")
        if not skipping:
            out.append(line)
    text = "".join(out)
    shipped = yaml.safe_load(DEPLOY_YAML.read_text())
    assert {k: v for k, v in shipped.items() if k != "storage"} == yaml.safe_load(text)
    return text


class Deployment:
    """dagster-webserver and dagster-daemon as two services (own process groups), a GraphQL client."""

    def __init__(self, tmp: Path, config_path: Path, stack: ExitStack):
        home = tmp / "dagster_home"
        home.mkdir()
        # Automation off, so the conformed refresh does not compete for the pool slot under test.
        (home / "dagster.yaml").write_text(shipped_instance_yaml_on_sqlite()
                                           + "auto_materialize:\n  enabled: false\n  use_sensors: false\n")
        env = {**os.environ, "DAGSTER_HOME": str(home), "INVOICE_PIPELINE_CONFIG": str(config_path),
               "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
        bin_dir = Path(sys.executable).parent
        self.logs = {"webserver": tmp / "webserver.log", "daemon": tmp / "daemon.log"}
        self.procs: dict[str, subprocess.Popen] = {}
        self.replaced: list[subprocess.Popen] = []  # webservers that could not bind their port

        def start(name: str, command: list[str]) -> None:
            if name in self.procs:
                self.replaced.append(self.procs[name])
            with self.logs[name].open("wb") as log:
                self.procs[name] = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                    start_new_session=True)

        stack.callback(self._stop_all)
        start("daemon", [str(bin_dir / "dagster-daemon"), "run", "-w", "workspace.yaml"])
        for _ in range(3):  # a free port can be taken by another process before the webserver binds it
            self.port = _free_port()
            start("webserver", [str(bin_dir / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1",
                                "-p", str(self.port)])
            serving = f"Serving dagster-webserver on http://127.0.0.1:{self.port}"
            _wait("the webserver to listen", lambda: self.procs["webserver"].poll() is not None
                  or serving in self.logs["webserver"].read_text(errors="replace"), 120, context=self.log_tail)
            if self.procs["webserver"].poll() is None:
                break
        assert self.procs["webserver"].poll() is None, self.log_tail()
        self.gql = GraphQL(f"http://127.0.0.1:{self.port}")

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs.values()]

    def _stop_all(self) -> None:
        """SIGTERM to every service's process group at once; SIGKILL to what is left after 10 s."""
        procs = list(self.procs.values()) + self.replaced
        for proc in procs:
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
        for proc in procs:
            _signal_group(proc.pid, signal.SIGKILL)  # also children of a leader that exited cleanly
            proc.wait()

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {n}:\n{p.read_text(errors='replace')[-chars:]}" for n, p in self.logs.items())

    def claimed_slots(self) -> list[dict]:
        data = self.gql("""{ instance { concurrencyLimit(concurrencyKey: "duckdb_write") {
            claimedSlots { runId stepKey } } } }""")
        return data["instance"]["concurrencyLimit"]["claimedSlots"]

    def messages(self, run_id: str) -> list[tuple[str, str, str]]:
        """(event type, step key, message) of every event of the run."""
        data = self.gql("""query($id: ID!) { logsForRun(runId: $id, limit: 1000) { __typename
            ... on EventConnection { events { __typename ... on MessageEvent { message stepKey } } } } }""", id=run_id)
        return [(e["__typename"], e.get("stepKey") or "", e.get("message") or "")
                for e in data["logsForRun"].get("events", [])]

    def run_worker_pid(self, run_id: str, step_key: str) -> int | None:
        """The run worker's pid, once the step's own process has started executing it."""
        events = self.messages(run_id)
        if not any(kind == "ExecutionStepStartEvent" and step == step_key for kind, step, _ in events):
            return None
        for _, _, message in events:
            if found := re.search(r"Started process for run \(pid: (\d+)\)", message):
                return int(found.group(1))
        return None

    def end_time(self, run_id: str) -> float:
        data = self.gql("query($id: ID!) { runOrError(runId: $id) { ... on Run { endTime } } }", id=run_id)
        return data["runOrError"]["endTime"]


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[Deployment, dict]]:
    from invoice_pipeline.simulate import config_document, start_simulators, write_config
    from invoice_pipeline.simulation import Knobs

    with ExitStack() as stack:
        # swo answers after 60 s (its run sits in its step, holding the slot, until killed); agvance at once.
        sims = {**start_simulators(stack, size=5, knobs=Knobs(latency=60), types=["softwareone"]),
                **start_simulators(stack, size=5, types=["agvance"])}
        doc = config_document(sims, {"duckdb_path": str(tmp_path / "warehouse.duckdb"),
                                     "published_path": str(tmp_path / "published" / "warehouse.duckdb"),
                                     "parquet_dir": str(tmp_path / "parquet")})
        for block in doc["sources"].values():
            block["schedule"] = "0 0 1 1 *"  # no scheduled run during the test
        config_path = write_config(doc, tmp_path / "invoice_pipeline.yaml")
        yield Deployment(tmp_path, config_path, stack), sims


def test_killed_run_is_failed_and_the_queued_run_goes_on(deployment) -> None:
    server, sims = deployment
    first = launch_run(server.gql, "swo_incremental", timeout=150, pids=server.pids())
    worker = _wait("the first run's step to be running", lambda: server.run_worker_pid(first, "swo__invoices"), 120,
                   context=server.log_tail)
    assert run_status(server.gql, first) == "STARTED"

    # A second writing run waits in the queue while the first holds the pool (granularity run, limit 1).
    second = launch_run(server.gql, "agvance_main_incremental", timeout=30, pids=server.pids())
    time.sleep(8)  # several passes of the daemon's run queue
    assert run_status(server.gql, second) == "QUEUED", server.log_tail()

    # The run worker dies as in an OOM kill: nothing in it gets to end the run.
    victims = [psutil.Process(worker), *psutil.Process(worker).children(recursive=True)]
    for process in victims:
        process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    _wait(f"the killed run {first} to be marked failed", lambda: run_status(server.gql, first) == "FAILURE",
          60, context=server.log_tail)

    status = _wait(f"the queued run {second} to finish",
                   lambda: (s := run_status(server.gql, second)) in ("SUCCESS", "FAILURE", "CANCELED") and s,
                   120, interval=1.0, context=server.log_tail)
    assert status == "SUCCESS", server.log_tail()
    elapsed = time.monotonic() - killed_at
    assert elapsed < 120, f"the queued run finished {elapsed:.0f}s after the kill"
    assert not server.claimed_slots(), "no step slot is ever held with per-run pools"
