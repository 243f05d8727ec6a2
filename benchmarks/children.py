"""What each benchmark runs in its own process (so its peak RSS and CPU are its own).

`python -m benchmarks.children TASK ARGS...` prints one JSON line with what it measured inside.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

ORACLE_LIST = "/ccstore/v1/selfservice/invoices"
ORACLE_Q = "LastUpdateDate>='2024-01-01T00:00:00Z'"
BATCH = 500


def _emit(**values: Any) -> None:
    print(json.dumps(values), flush=True)


def _lines(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from f


# -- benchmark 1: flatten + load of pre-generated pages ---------------------------------------
def floor(pages: str) -> None:
    """The parse floor: orjson.loads of every page, nothing else."""
    started = time.perf_counter()
    n = 0
    for line in _lines(pages):
        orjson.loads(line)
        n += 1
    _emit(seconds=time.perf_counter() - started, invoices=n)


def _flat_rows_duckdb(path: str, schema: str, skip: tuple[str, ...]) -> int:
    import duckdb

    con = duckdb.connect(path, read_only=True)
    try:
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = ?", [schema]).fetchall()]
        return sum(con.execute(f'SELECT count(*) FROM "{schema}"."{t}"').fetchone()[0]
                   for t in tables if not t.startswith(skip))
    finally:
        con.close()


def _pages_app(duckdb_path: Path) -> Any:
    """The config of benchmark 1's runs: one Oracle source whose pages come from a file, not HTTP."""
    from invoice_pipeline.config import parse_config

    work = duckdb_path.parent
    return parse_config({
        "warehouse": {"duckdb_path": str(duckdb_path), "published_path": str(work / "published.duckdb"),
                      "parquet_dir": str(work / "parquet")},
        "sources": {"oracle": {"type": "oracle_occ", "base_url": "http://127.0.0.1:9", "username": "u",
                               "password": "p", "start_date": "2024-01-01T00:00:00Z"}},
    })


def product(pages: str, workdir: str) -> None:
    """The product's load path (run_source: prepare_batch + write_batch + cursor) over the pages."""
    from invoice_pipeline.pipeline import run_source

    from benchmarks.pages_source import PagesSource

    work = Path(workdir)
    app = _pages_app(work / "warehouse.duckdb")
    started = time.perf_counter()
    source = PagesSource("oracle", app.sources["oracle"], pages)
    summary = run_source(app, "oracle", source=source)
    seconds = time.perf_counter() - started
    rows = _flat_rows_duckdb(str(work / "warehouse.duckdb"), "oracle", ("_",))
    _emit(seconds=seconds, invoices=summary.invoices_loaded, rows=rows)


def _prepared_batches(pages: str, app: Any) -> Iterator[Any]:
    """The product's prepared batches of the pages, made one at a time (outside any timing)."""
    from datetime import UTC, datetime

    from invoice_pipeline.batch import prepare_batch

    from benchmarks.pages_source import PagesSource

    source = PagesSource("oracle", app.sources["oracle"], pages)
    loaded_at = datetime.now(UTC)
    for records in source.extract(None):
        yield prepare_batch(source, records, "floor", loaded_at)[0]


def write_floor(pages: str, workdir: str) -> None:
    """How long DuckDB alone takes to store what a load must keep, batches prepared beforehand.

    Three passes over the same prepared batches, only the writes timed (wall and CPU of this process):
    the product's `write_batch` (version check, raw de-duplication, registry, one commit per batch,
    checkpoint at the end), then plain `INSERT ... SELECT * FROM arrow` of the same Arrow tables into
    tables without any check, with a commit per batch and in one transaction: DuckDB's own floor for
    this data, the least any design that keeps these tables in one DuckDB file can pay.
    """
    from invoice_pipeline.warehouse import Warehouse

    work = Path(workdir)
    app = _pages_app(work / "floor.duckdb")
    wh = Warehouse(app.warehouse)
    with wh.writer() as con:
        wh.ensure_main(con)
        wh.ensure_source(con, "oracle")
    timed = _Stopwatch()
    turns = wh.turns()
    rows = 0
    for batch in _prepared_batches(pages, app):
        rows += sum(t.num_rows for t in batch.flat.values())
        with timed, turns.connection() as con:  # a turn's connect and closing checkpoint included
            wh.write_batch(con, batch)
    with timed:
        turns.close()
    plain = _plain_inserts(pages, app, work / "plain.duckdb", commit_per_batch=True)
    single = _plain_inserts(pages, app, work / "single.duckdb", commit_per_batch=False)
    _emit(seconds=timed.wall, cpu_s=timed.cpu, plain_seconds=plain.wall, plain_cpu_s=plain.cpu,
          single_seconds=single.wall, single_cpu_s=single.cpu, rows=rows)


class _Stopwatch:
    """Wall and CPU seconds (this process, all threads) summed over the `with` blocks it times."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter(), time.process_time()

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self._started[0]
        self.cpu += time.process_time() - self._started[1]


def _plain_inserts(pages: str, app: Any, path: Path, *, commit_per_batch: bool) -> _Stopwatch:
    """The prepared batches' Arrow tables inserted as they are into plain tables (columns added as
    they appear), on a connection set up as the product's; wall and CPU of the inserts, commits and
    the final checkpoint. One transaction for everything lets DuckDB write full row groups straight
    to the file instead of through the WAL (and makes memory grow with the data)."""
    from invoice_pipeline.warehouse import Warehouse

    con = Warehouse(app.warehouse.model_copy(update={"duckdb_path": path}))._connect()
    con.execute("SET threads = 1")  # as the product's batch writes
    created: dict[str, set[str]] = {}

    def insert(name: str, table: Any) -> None:
        con.register("_arrow", table)
        if name not in created:
            con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM _arrow LIMIT 0')
            created[name] = set(table.column_names)
        for field in table.schema:
            if field.name not in created[name]:
                con.execute(f'ALTER TABLE "{name}" ADD COLUMN "{field.name}" VARCHAR')
                created[name].add(field.name)
        con.execute(f'INSERT INTO "{name}" BY NAME SELECT * FROM _arrow')
        con.unregister("_arrow")

    def write(batch: Any) -> None:
        if commit_per_batch:
            con.execute("BEGIN TRANSACTION")
        for table_path, table in batch.flat.items():
            insert("flat_" + table_path.replace(".", "_"), table)
        for name, table in batch.conformed.items():
            insert("conformed_" + name, table)
        insert("raw", batch.raw)
        if commit_per_batch:
            con.execute("COMMIT")

    timed = _Stopwatch()
    if not commit_per_batch:
        con.execute("BEGIN TRANSACTION")
    for batch in _prepared_batches(pages, app):
        with timed:
            write(batch)
    with timed:
        if not commit_per_batch:
            con.execute("COMMIT")
        con.close()
    return timed


def dlt_parquet(pages: str, workdir: str) -> None:
    """dlt 1.x as documented for its fastest path: a resource of dicts, Parquet loader, DuckDB."""
    import dlt

    money = {"data_type": "decimal", "precision": 18, "scale": 4}

    @dlt.resource(name="invoices", write_disposition="append",
                  columns={"EnteredAmount": money, "InvoiceBalanceAmount": money})
    def invoices() -> Iterator[list[dict]]:
        batch = []
        for line in _lines(pages):
            batch.append(orjson.loads(line))
            if len(batch) == BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    work = Path(workdir)
    pipeline = dlt.pipeline(pipeline_name="bench_flatten", pipelines_dir=str(work / "dlt"),
                            destination=dlt.destinations.duckdb(str(work / "dlt.duckdb")), dataset_name="oracle")
    started = time.perf_counter()
    pipeline.run(invoices(), loader_file_format="parquet")
    seconds = time.perf_counter() - started
    rows = _flat_rows_duckdb(str(work / "dlt.duckdb"), "oracle", ("_dlt",))
    _emit(seconds=seconds, invoices=None, rows=rows)


# -- benchmark 5: end to end against the Oracle simulator -----------------------------------------
def _oracle_login(session: Any, base: str, user: str, password: str) -> str:
    resp = session.post(base + "/ccstore/v1/login", data={"grant_type": "password", "username": user, "password": password})
    resp.raise_for_status()
    return resp.json()["access_token"]


def bare_client(base: str, user: str, password: str, workers: str = "8") -> None:
    """What the network alone costs: list pages in order, details on 8 threads, bodies discarded.

    urllib3 directly (the lightest common client; the product uses it too), one pool shared by the threads.
    """
    from urllib.parse import urlencode

    import urllib3

    started = time.perf_counter()
    pool = urllib3.PoolManager(maxsize=int(workers) * 2)
    login = pool.request("POST", base + "/ccstore/v1/login",
                         fields={"grant_type": "password", "username": user, "password": password}, encode_multipart=False)
    headers = {"Authorization": f"Bearer {orjson.loads(login.data)['access_token']}"}
    calls = 1

    def detail(invoice_id: str) -> int:
        r = pool.request("GET", f"{base}{ORACLE_LIST}/{invoice_id}", headers=headers)
        assert r.status == 200, r.status
        return len(r.data)

    with ThreadPoolExecutor(int(workers)) as pool_threads:
        futures = []
        offset = 0
        while True:
            query = urlencode({"q": ORACLE_Q, "orderBy": "CustomerTransactionId:asc", "limit": 25, "offset": offset})
            r = pool.request("GET", f"{base}{ORACLE_LIST}?{query}", headers=headers)
            assert r.status == 200, r.status
            body = orjson.loads(r.data)
            calls += 1
            futures += [pool_threads.submit(detail, item["CustomerTransactionId"]) for item in body["items"]]
            if not body.get("hasMore") or not body["items"]:
                break
            offset += len(body["items"])
        size = sum(f.result() for f in futures)
    calls += len(futures)
    _emit(seconds=time.perf_counter() - started, requests=calls, invoices=len(futures), bytes=size)


def dlt_rest(base: str, user: str, password: str, workdir: str) -> None:
    """The Oracle extraction as a competent dlt user writes it: rest_api source, parallel details, Parquet."""
    import os

    import dlt
    import requests
    from dlt.sources.rest_api import rest_api_source

    os.environ.setdefault("EXTRACT__WORKERS", "8")
    started = time.perf_counter()
    token = _oracle_login(requests.Session(), base, user, password)
    source = rest_api_source({
        "client": {"base_url": base, "auth": {"type": "bearer", "token": token}},
        "resources": [
            {
                "name": "invoice_list",
                "selected": False,
                "endpoint": {
                    "path": ORACLE_LIST.lstrip("/"),
                    "params": {"q": ORACLE_Q, "orderBy": "CustomerTransactionId:asc"},
                    "data_selector": "items",
                    "paginator": {"type": "offset", "limit": 25, "offset_param": "offset", "limit_param": "limit",
                                  "total_path": None, "has_more_path": "hasMore"},
                },
            },
            {
                "name": "invoices",
                "parallelized": True,
                "endpoint": {
                    "path": ORACLE_LIST.lstrip("/") + "/{resources.invoice_list.CustomerTransactionId}",
                    "data_selector": "$",
                    "paginator": "single_page",
                },
            },
        ],
    })
    work = Path(workdir)
    pipeline = dlt.pipeline(pipeline_name="bench_e2e", pipelines_dir=str(work / "dlt"),
                            destination=dlt.destinations.duckdb(str(work / "dlt_e2e.duckdb")), dataset_name="oracle")
    info = pipeline.run(source, loader_file_format="parquet")
    seconds = time.perf_counter() - started
    rows = _flat_rows_duckdb(str(work / "dlt_e2e.duckdb"), "oracle", ("_dlt",))
    _emit(seconds=seconds, rows=rows, loaded=bool(info.loads_ids))


# -- benchmark 2: extraction only -------------------------------------------------------------------
def extract(config_json: str) -> None:
    """One source's extract() over its whole history, records counted and dropped."""
    from invoice_pipeline.config import parse_config
    from invoice_pipeline.pipeline import build_source
    from invoice_pipeline.sources.base import Window
    from invoice_pipeline.timeutil import utc_now

    block = json.loads(config_json)
    app = parse_config({"sources": {"src": block}})
    source = build_source(app, "src")
    started = time.perf_counter()
    n = 0
    try:
        for batch in source.extract(Window(app.sources["src"].start_date, utc_now())):
            n += len(batch)
    finally:
        source.close()
    _emit(seconds=time.perf_counter() - started, invoices=n, requests=source.http.stats.api_calls,
          pages=source.stats.pages, concurrency=app.sources["src"].concurrency)


# -- benchmark 7: re-poll of open invoices -------------------------------------------------------
def _repoll_app(config_json: str, workdir: str) -> Any:
    from invoice_pipeline.config import parse_config

    work = Path(workdir)
    return parse_config({"warehouse": {"duckdb_path": str(work / "warehouse.duckdb"),
                                       "published_path": str(work / "published" / "warehouse.duckdb"),
                                       "parquet_dir": str(work / "parquet")},
                         "sources": {"oracle": json.loads(config_json)}})


def first_load(config_json: str, workdir: str) -> None:
    """An incremental run from an empty warehouse (what the re-poll then reads back)."""
    from invoice_pipeline.pipeline import run_source

    started = time.perf_counter()
    summary = run_source(_repoll_app(config_json, workdir), "oracle")
    _emit(seconds=time.perf_counter() - started, invoices=summary.invoices_loaded, api_calls=summary.api_calls)


def repoll(config_json: str, workdir: str, how: str) -> None:
    """lifecycle.repoll_open_invoices of every open invoice. how = "list": the client's re-poll
    (list pages, details of changed ones); "details": one detail call per open invoice (fetch_by_ids,
    what the re-poll did before)."""
    from invoice_pipeline import lifecycle
    from invoice_pipeline.lifecycle import repoll

    if how == "details":
        repoll._repoll_reader = repoll._fetch_by_ids  # type: ignore[assignment]
    started = time.perf_counter()
    result = lifecycle.repoll_open_invoices(_repoll_app(config_json, workdir), "oracle")
    _emit(seconds=time.perf_counter() - started, **{k: v for k, v in result.as_metadata().items()
                                                    if isinstance(v, int | float | str)})


TASKS = {"first_load": first_load, "repoll": repoll, "floor": floor, "product": product, "write_floor": write_floor, "dlt_parquet": dlt_parquet, "bare_client": bare_client,
         "dlt_rest": dlt_rest, "extract": extract}

if __name__ == "__main__":
    TASKS[sys.argv[1]](*sys.argv[2:])
