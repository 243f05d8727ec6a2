"""Python half of scripts/production_recipe.sh: the simulators, and a run launched through GraphQL.

`simulators` starts the four built-in simulators on the given ports (0 = any free port), writes the
pipeline config that points at them (warehouse files under --workdir) and serves until SIGTERM.
`launch` waits until the webserver has loaded the code location, launches a job with the
`launchRun` mutation (the queued run coordinator queues it, the daemon starts it) and waits for it
to finish; it prints the run id and exits 0 only if the run succeeded.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import requests

TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


def cmd_simulators(args: argparse.Namespace) -> int:
    from invoice_pipeline.simulate import config_document, default_ports, start_simulators, write_config

    types = list(default_ports())
    ports = [int(p) for p in args.ports.split(",")]
    if len(ports) == 1:
        ports = ports * len(types)
    by_type = dict(zip(types, ports, strict=True))
    work = Path(args.workdir).resolve()
    warehouse = {"duckdb_path": str(work / "warehouse.duckdb"),
                 "published_path": str(work / "published" / "warehouse.duckdb"),
                 "parquet_dir": str(work / "parquet")}
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    with ExitStack() as stack:
        sims = start_simulators(stack, size=args.size, ports=by_type)
        write_config(config_document(sims, warehouse), Path(args.config))
        for name, sim in sims.items():
            print(f"simulator {name:14s} {sim.base_url}", flush=True)
        Path(args.ready).write_text("ready\n")
        while not stop["now"]:
            time.sleep(0.2)
    return 0


class GraphQL:
    def __init__(self, url: str):
        self.url = url.rstrip("/") + "/graphql"
        self.http = requests.Session()
        self.http.trust_env = False  # a loopback webserver, whatever proxy the environment sets

    def __call__(self, query: str, **variables: Any) -> dict:
        response = self.http.post(self.url, json={"query": query, "variables": variables}, timeout=30)
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise RuntimeError(f"GraphQL error: {body['errors']}")
        return body["data"]


def _wait(what: str, condition, timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _location(gql: GraphQL) -> tuple[str, str] | None:
    """(location name, repository name) once the code location loaded; a load error fails at once."""
    try:
        data = gql("""{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
            locationOrLoadError { __typename ... on PythonError { message }
              ... on RepositoryLocation { repositories { name } } } } } } }""")
    except (requests.RequestException, RuntimeError):
        return None  # not listening yet
    for entry in data["workspaceOrError"].get("locationEntries") or []:
        loaded = entry["locationOrLoadError"]
        if loaded and loaded["__typename"] == "PythonError":
            raise SystemExit(f"code location {entry['name']} failed to load: {loaded['message']}")
        if entry["loadStatus"] == "LOADED" and loaded:
            return entry["name"], loaded["repositories"][0]["name"]
    return None


LAUNCH = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) { __typename
  ... on LaunchRunSuccess { run { runId status } }
  ... on PythonError { message }
  ... on InvalidStepError { invalidStepKey }
  ... on RunConfigValidationInvalid { errors { message } }
  ... on UnauthorizedError { message }
  ... on PipelineNotFoundError { message } } }"""


def _pids_alive(pids: list[int]) -> None:
    """Fail at once if a service died (e.g. its port was taken: then another server would answer)."""
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise SystemExit(f"service pid {pid} exited (see its log)") from None


def launch_run(gql: GraphQL, job: str, timeout: float, pids: list[int] = ()) -> str:
    def ready():
        _pids_alive(list(pids))
        return _location(gql)

    location, repository = _wait("the webserver to load the code location", ready, timeout)
    params = {"selector": {"repositoryLocationName": location, "repositoryName": repository, "jobName": job},
              "runConfigData": {}}
    result = gql(LAUNCH, params=params)["launchRun"]
    if result["__typename"] != "LaunchRunSuccess":
        raise SystemExit(f"launchRun of job {job} failed: {result}")
    return result["run"]["runId"]


def run_status(gql: GraphQL, run_id: str) -> str:
    data = gql("query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }", id=run_id)
    return data["runOrError"].get("status", data["runOrError"]["__typename"])


def failure_messages(gql: GraphQL, run_id: str) -> list[str]:
    data = gql("""query($id: ID!) { logsForRun(runId: $id, limit: 5000) { __typename
        ... on EventConnection { events { __typename ... on MessageEvent { message } } } } }""", id=run_id)
    return [e.get("message") or "" for e in data["logsForRun"].get("events", [])
            if e["__typename"] in ("ExecutionStepFailureEvent", "RunFailureEvent", "EngineEvent")]


def cmd_launch(args: argparse.Namespace) -> int:
    gql = GraphQL(args.url)
    started = time.monotonic()
    run_id = launch_run(gql, args.job, args.timeout, args.pid or [])
    print(f"launched run {run_id} of job {args.job}", file=sys.stderr, flush=True)
    status = _wait(f"run {run_id} to finish", lambda: (s := run_status(gql, run_id)) in TERMINAL and s,
                   max(args.timeout - (time.monotonic() - started), 1), interval=1.0)
    print(f"run {run_id} ended {status} after {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    if status != "SUCCESS":
        for message in failure_messages(gql, run_id):
            print(f"  {message[:500]}", file=sys.stderr)
        return 1
    print(run_id)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sims = sub.add_parser("simulators")
    sims.add_argument("--ports", default="8701,8702,8703,8704",
                      help="oracle_occ,crmcom,softwareone,agvance ports; one value for all (0 = any free port)")
    sims.add_argument("--size", type=int, default=50)
    sims.add_argument("--workdir", required=True)
    sims.add_argument("--config", required=True, help="where to write the pipeline config")
    sims.add_argument("--ready", required=True, help="file written once the simulators listen")
    sims.set_defaults(func=cmd_simulators)
    launch = sub.add_parser("launch")
    launch.add_argument("--url", required=True)
    launch.add_argument("--job", required=True)
    launch.add_argument("--timeout", type=float, default=300)
    launch.add_argument("--pid", type=int, action="append", help="a service that must stay alive (repeatable)")
    launch.set_defaults(func=cmd_launch)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
