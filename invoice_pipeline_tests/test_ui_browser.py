"""The Dagster UI in a real browser, in the README's order: demo, then simulate + dagster dev + Materialize all.

In an empty working folder (as a fresh checkout): `invoice-pipeline demo` (scripts/demo.sh's step),
then `invoice-pipeline simulate` in the background (on free ports, written to data/simulate.yaml),
then `dagster dev` with the DAGSTER_HOME that simulate prints and no config file, on a free loopback
port. Headless Chromium (Debian's, through selenium) checks that the catalog and the lineage graph
list every source's assets, clicks "Materialize all" on the global lineage graph, and the run must
succeed (in the UI and through /graphql), with the extraction's progress lines in the run's logs, the
rows in the warehouse and a published snapshot. The demo's warehouse (data/demo/) is left as it was:
demo and simulate never mix their data sets.

`bash scripts/browser_test.sh --full` keeps the automation daemon on (the conformed refresh and publish
that follow a landed source) and uses more invoices; CI runs the default form.
Needs chromium and chromedriver (scripts/install_chromium.sh); skipped without them unless CI is set.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
import yaml

from invoice_pipeline.config import load_config
from invoice_pipeline.warehouse import Warehouse

REPO = Path(__file__).resolve().parents[1]
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FULL = os.environ.get("INVOICE_PIPELINE_UI_FULL", "") not in ("", "0")
SIZE = 60 if FULL else 25  # invoices per simulated source
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}
QUIET_AUTOMATION = "auto_materialize:\n  enabled: false\n  use_sensors: false\nfreshness:\n  enabled: false\n"


def _require_browser() -> str:
    chromium = shutil.which("chromium")
    missing = [name for name, ok in (("chromium", chromium), ("chromedriver", CHROMEDRIVER.exists())) if not ok]
    if missing:
        reason = f"{' and '.join(missing)} not installed (run: bash scripts/install_chromium.sh)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI is set but {reason}")
        pytest.skip(reason)
    return str(chromium)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, condition: Callable[[], Any], timeout: float, interval: float = 0.5,
          alive: Callable[[], str | None] = lambda: None) -> Any:
    """Poll until condition() is truthy; fail with `what` (and why the server died, if it did)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        died = alive()
        if died:
            pytest.fail(f"while waiting for {what}: {died}")
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


class DagsterUI:
    """A `dagster dev` process group (webserver + daemon + code server) and a GraphQL client for it."""

    def __init__(self, tmp: Path, home: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The instance config `simulate` wrote; the default form also turns the automation daemon off,
        # so the conformed refresh that follows a landed source does not compete for the CPU with the
        # run being watched (automation is tested in test_schedules.py; --full keeps it on).
        if not FULL:
            with (home / "dagster.yaml").open("a") as f:
                f.write(QUIET_AUTOMATION)
        self.log_path = tmp / "dagster_dev.log"
        env = {**_user_env(), "DAGSTER_HOME": str(home)}
        dagster = Path(sys.executable).with_name("dagster")
        # The project's workspace.yaml, in the working folder (its working_directory is ".").
        shutil.copy(REPO / "workspace.yaml", tmp / "workspace.yaml")
        command = [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)]
        # A shell's background job inherits SIGINT ignored, which would make dagster dev deaf to its
        # clean-shutdown signal: restore the default before exec'ing it.
        launcher = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", launcher, *command],
                cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.http = requests.Session()
        self.http.trust_env = False  # loopback only, whatever proxy the environment sets

    def died(self) -> str | None:
        if self.proc.poll() is None:
            return None
        return f"dagster dev exited with {self.proc.returncode}:\n{self.log_tail()}"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        """SIGINT is dagster dev's clean shutdown; the process group goes with SIGKILL if it lingers."""
        for sig, grace in ((signal.SIGINT, 8.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(grace)
                if sig == signal.SIGKILL:
                    return
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # children of a leader that exited cleanly
        except ProcessLookupError:
            pass

    def graphql(self, query: str, **variables: Any) -> dict:
        response = self.http.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=30)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def loaded(self) -> bool:
        """The webserver answers and the code location loaded (a load error fails at once)."""
        try:
            data = self.graphql("""{ workspaceOrError { __typename ... on Workspace { locationEntries {
                name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }""")
        except requests.RequestException:
            return False
        entries = data["workspaceOrError"].get("locationEntries") or []
        for entry in entries:
            error = entry["locationOrLoadError"]
            if error and error["__typename"] == "PythonError":
                pytest.fail(f"code location {entry['name']} failed to load: {error['message']}")
        return bool(entries) and all(e["loadStatus"] == "LOADED" and e["locationOrLoadError"] for e in entries)

    def location_name(self) -> str:
        data = self.graphql("{ workspaceOrError { ... on Workspace { locationEntries { name } } } }")
        return data["workspaceOrError"]["locationEntries"][0]["name"]

    def run_ids(self) -> set[str]:
        data = self.graphql("{ runsOrError { ... on Runs { results { runId } } } }")
        return {r["runId"] for r in data["runsOrError"]["results"]}

    def run_status(self, run_id: str) -> str:
        data = self.graphql("query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }", id=run_id)
        return data["runOrError"].get("status", data["runOrError"]["__typename"])

    def run_messages(self, run_id: str) -> list[tuple[str, str, str]]:
        """(event type, step key, message) of every event of the run, as the UI's log viewer gets them."""
        data = self.graphql("""query($id: ID!) { logsForRun(runId: $id, limit: 5000) { __typename
            ... on EventConnection { events { __typename ... on MessageEvent { message stepKey } } } } }""", id=run_id)
        return [(e["__typename"], e.get("stepKey") or "", e.get("message") or "")
                for e in data["logsForRun"]["events"]]


def _user_env() -> dict[str, str]:
    """A user's shell: no config or instance chosen yet, loopback never proxied."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DAGSTER_HOME", "INVOICE_PIPELINE_CONFIG") and not k.startswith("INVOICE_PIPELINE_PAUSE")}
    return {**env, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def _invoice_pipeline(*args: str) -> list[str]:
    return [sys.executable, "-m", "invoice_pipeline.cli", *args]


def _start_simulate(tmp: Path, stack: ExitStack) -> Path:
    """`invoice-pipeline simulate` in the background; returns the DAGSTER_HOME it tells the user to export."""
    out_path = tmp / "simulate.log"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(_invoice_pipeline("simulate", "--size", str(SIZE), "--port-base", "0"),
                                cwd=tmp, env=_user_env(), stdout=out, stderr=subprocess.STDOUT)
    stack.callback(lambda: (proc.terminate(), proc.wait(10)))
    died = lambda: None if proc.poll() is None else f"simulate exited:\n{out_path.read_text()}"  # noqa: E731
    _wait("simulate to serve", lambda: "Ctrl-C stops the simulators" in out_path.read_text(), 60, alive=died)
    line = next(l for l in out_path.read_text().splitlines() if "export DAGSTER_HOME=" in l)
    return Path(line.split("export DAGSTER_HOME=", 1)[1].strip())


def _browser(chromium: str, stack: ExitStack):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--no-proxy-server", "--window-size=1600,4000"):
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={stack.enter_context(tempfile.TemporaryDirectory(prefix='chromium-'))}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    stack.callback(driver.quit)
    return driver


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[tuple[DagsterUI, Any, list[str], Path]]:
    chromium = _require_browser()
    with ExitStack() as stack:
        # 1. The README's quick start: the demo, with its own data set and warehouse.
        demo = subprocess.run(_invoice_pipeline("demo", "--size", "20"), cwd=tmp_path, env=_user_env(),
                              capture_output=True, text=True, timeout=300)
        assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
        # 2. The README's "Dagster UI": simulate, export the DAGSTER_HOME it prints, dagster dev.
        home = _start_simulate(tmp_path, stack)
        server = DagsterUI(tmp_path, home)
        stack.callback(server.stop)
        driver = _browser(chromium, stack)  # starts while dagster dev loads
        _wait("dagster dev to load the code location", server.loaded, timeout=120, alive=server.died)
        sources = list(yaml.safe_load((tmp_path / "data" / "simulate.yaml").read_text())["sources"])
        yield server, driver, sources, tmp_path


def _body_text(driver) -> str:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    try:
        return driver.find_element(By.TAG_NAME, "body").text
    except WebDriverException:  # the page re-rendered under us
        return ""


def _click_button(driver, label: str, timeout: float = 30) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from selenium.common.exceptions import ElementClickInterceptedException
    from selenium.webdriver.common.keys import Keys

    xpath = f"//button[normalize-space()='{label}']"
    deadline = time.monotonic() + timeout
    while True:
        button = WebDriverWait(driver, timeout).until(ec.element_to_be_clickable((By.XPATH, xpath)))
        try:
            button.click()
            return
        except ElementClickInterceptedException:
            # A dialog (e.g. the first-visit welcome) opened over the page after we looked: close it, retry.
            if time.monotonic() > deadline:
                raise
            _dismiss_welcome(driver)
            driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
            time.sleep(0.5)


def _dismiss_welcome(driver) -> None:
    """A fresh instance greets the first visitor with a 'Join the Dagster community' dialog."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):
        if button.is_displayed():
            button.click()


def _launched_run_id(driver, timeout: float = 30) -> str:
    """The run id from the 'Launched run ... View' toast the UI shows after a launch."""
    from selenium.webdriver.common.by import By

    def link() -> str | None:
        for a in driver.find_elements(By.XPATH, "//a[contains(@href, '/runs/')]"):
            href = a.get_attribute("href") or ""
            run_id = href.rstrip("/").rsplit("/runs/", 1)[-1]
            if len(run_id) == 36:
                return run_id
        return None

    return _wait("the UI to confirm the launched run", link, timeout)


def test_readme_order_demo_then_ui_materialize_all(ui) -> None:
    server, driver, sources, workdir = ui
    demo_before = (workdir / "data/demo/warehouse.duckdb").stat().st_mtime

    # The catalog lists every configured source's asset, the conformed model and the published snapshot.
    # (Its list is virtualised: rows below the fold are not rendered, hence the tall window.)
    driver.get(f"{server.url}/assets")
    expected = {f"{s} / invoices" for s in sources} | {"main / invoices", "main / invoice_lines", "published / warehouse"}
    _wait(f"the asset catalog to list {sorted(expected)}", lambda: expected <= set(_body_text(driver).split("\n")), 60)

    # The global lineage graph shows one group per source (plus conformed and published).
    driver.get(f"{server.url}/asset-groups")
    _wait("the lineage graph", lambda: "Materialize all" in _body_text(driver), 60)
    _dismiss_welcome(driver)
    graph = _body_text(driver)
    missing_groups = [g for g in [*sources, "conformed", "published"] if g not in graph.split("\n")]
    assert not missing_groups, f"groups missing from the lineage graph: {missing_groups}\n{graph[:2000]}"

    # Launch by clicking, as a user would.
    _click_button(driver, "Materialize all")
    materialized, timeout = sources, 600.0
    run_id = _launched_run_id(driver)

    status = _wait(f"run {run_id} to finish", lambda: (s := server.run_status(run_id)) in TERMINAL and s,
                   timeout, interval=1.0, alive=server.died)
    events = server.run_messages(run_id)
    failures = [m for kind, _, m in events if kind in ("ExecutionStepFailureEvent", "RunFailureEvent")]
    assert status == "SUCCESS", f"run {run_id} ended {status}: {failures}\n{server.log_tail()}"

    # The UI shows the run as succeeded.
    driver.get(f"{server.url}/runs/{run_id}")
    _wait("the run page to show Success", lambda: "Success" in _body_text(driver).split("\n"), 60)

    # Progress lines (counts and rates) of the extraction are in the run's logs in the UI.
    for source in materialized:
        lines = [m for kind, step, m in events
                 if kind == "LogMessageEvent" and step == f"{source}__invoices" and "invoices/s" in m]
        assert lines and f"{SIZE} invoices" in lines[-1], (source, lines)

    # And the rows landed: every invoice of each materialized source, in its schema and the conformed model.
    app = load_config(workdir / "data" / "simulate.yaml")
    assert Path(app.warehouse.duckdb_path) == Path("data/warehouse.duckdb")
    with Warehouse(app.warehouse.model_copy(update={"duckdb_path": workdir / app.warehouse.duckdb_path})).writer() as con:
        for source in materialized:  # (the writer lock waits for any later run, e.g. the automation's)
            assert con.execute(f'SELECT count(*) FROM "{source}".invoices').fetchone()[0] == SIZE
            assert con.execute("SELECT count(*) FROM main.invoices WHERE source_name = ?", [source]).fetchone()[0] == SIZE
    assert (workdir / app.warehouse.published_path).exists()
    # The demo's warehouse was not touched by the UI's run.
    assert (workdir / "data/demo/warehouse.duckdb").stat().st_mtime == demo_before

    # A backfill with a malformed date, opened in the launchpad (as a link or a pasted config would) and
    # launched: the UI shows the refusal naming the key, and no run is created.
    source = sources[0]
    bad = yaml.safe_dump({"ops": {f"{source}__invoices": {"config": {"backfill": {
        "start": "March 2024", "end": "2024-03-31T23:59:59Z"}}}}})
    runs_before = server.run_ids()
    driver.get(f"{server.url}/locations/__repository__@{server.location_name()}/jobs/{source}_incremental"
               f"/playground/setup?{urlencode({'config': bad})}")
    _dismiss_welcome(driver)
    _click_button(driver, "Launch Run")
    _wait("the launchpad to refuse the backfill date",
          lambda: "is not an ISO-8601 timestamp" in _body_text(driver), 60, alive=server.died)
    shown = _body_text(driver)
    assert f"{source}__invoices:config:backfill:start" in shown and "March 2024" in shown, shown[:3000]
    assert server.run_ids() == runs_before
