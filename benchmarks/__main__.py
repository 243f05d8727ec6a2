"""Run the benchmarks of issue 10 and print a table per benchmark; the figures go to benchmarks/out/.

    .venv/bin/python -m benchmarks            # default scale (~10 minutes on 2 cores)
    .venv/bin/python -m benchmarks --full     # adds 200k invoices to the flatten+load and scale runs
    .venv/bin/python -m benchmarks --only 1,5 # a subset

Every measured thing runs in its own process: wall time, CPU seconds (getrusage of the child) and
peak RSS (psutil, the child and its children, sampled every 20 ms). No figure is asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import yaml

from benchmarks.sims import ensure_pages

OUT = Path(__file__).resolve().parent / "out"
PY = sys.executable
CLI = str(Path(PY).with_name("invoice-pipeline"))
SIM_USER, SIM_PASSWORD = "integration.user@example.com", "Welcome1!occ"


# -- measuring ------------------------------------------------------------------------------------
def measure(cmd: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> dict[str, Any]:
    """Run cmd to completion: wall s, CPU s, peak RSS MB of its process tree, its last JSON line."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, cwd=cwd)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        # Cheap enough not to steal the measured process's CPU: the process list is refreshed
        # once a second, memory is read every 50 ms.
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        tree, refreshed = [root], 0.0
        while not done.is_set():
            now = time.monotonic()
            if now - refreshed > 1.0:
                try:
                    tree = [root, *root.children(recursive=True)]
                except psutil.Error:
                    pass
                refreshed = now
            total = 0
            for p in tree:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            peak[0] = max(peak[0], total)
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{err[-3000:]}")
    inner: dict[str, Any] = {}
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            inner = json.loads(line)
            break
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 2), "peak_rss_mb": round(peak[0] / 2**20, 1),
            "inner": inner, "stdout": out}


@contextmanager
def simulator(kind: str, size: int, latency: float = 0.0, pages: Path | None = None):
    """A simulator in its own process (its CPU is not the client's); yields its source config block."""
    cmd = [PY, "-m", "benchmarks.sims", "serve", kind, str(size), str(latency)] + ([str(pages)] if pages else [])
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            raise RuntimeError(f"simulator {kind} did not start")
        yield json.loads(line)
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def table(title: str, headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,d}"
        return "" if v is None else str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = [f"\n## {title}\n", "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def _workdir(name: str) -> Path:
    path = OUT / "work" / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def write_config(path: Path, sources: dict[str, dict], work: Path) -> Path:
    doc = {"warehouse": {"duckdb_path": str(work / "warehouse.duckdb"), "published_path": str(work / "published" / "warehouse.duckdb"),
                         "parquet_dir": str(work / "parquet")}, "sources": sources}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def pipeline_run(config: Path, work: Path, sources: list[str] | None = None) -> dict[str, Any]:
    """`invoice-pipeline run` as a user starts it (process start, Dagster, publish included)."""
    cmd = [CLI, "run", "--config", str(config)] + [a for s in sources or [] for a in ("--source", s)]
    result = measure(cmd, env={"DAGSTER_HOME": str(work / "dagster_home")}, cwd=str(work))
    # the run's own table: source, status, extracted, loaded, stale, quarantined, API calls, secs
    result["sources"] = {}
    for line in result["stdout"].splitlines():
        parts = line.split()
        if len(parts) == 8 and parts[1] == "ok":
            result["sources"][parts[0]] = {"loaded": int(parts[3]), "api_calls": int(parts[6]), "secs": float(parts[7])}
    result["dagster_run_s"] = _last_run_seconds(work / "dagster_home")
    return result


def _last_run_seconds(dagster_home: Path) -> float:
    """The run itself as the instance recorded it, from its creation (which stores the planned
    materializations and check evaluations) to its end: what follows process start-up (interpreter,
    imports, config, opening the Dagster instance) and precedes process exit."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        record = instance.get_run_records(limit=1)[0]
    return round(record.end_time - record.create_timestamp.timestamp(), 3)


# -- the five benchmarks ------------------------------------------------------------------------------
def bench_flatten_load(sizes: list[int], report: dict) -> str:
    """1. Flatten + load of pre-generated Oracle detail pages: product vs dlt (Parquet loader) vs parse floor,
    and what the writes alone cost (the floor any design storing these tables in DuckDB pays)."""
    rows_out, figures = [], []
    for size in sizes:
        pages = ensure_pages(OUT, size)
        mb = pages.stat().st_size / 1e6
        floor = measure([PY, "-m", "benchmarks.children", "floor", str(pages)])
        work = _workdir(f"flatten_{size}")
        ours = measure([PY, "-m", "benchmarks.children", "product", str(pages), str(work)])
        dlt = measure([PY, "-m", "benchmarks.children", "dlt_parquet", str(pages), str(work)])
        writes = measure([PY, "-m", "benchmarks.children", "write_floor", str(pages), str(work)])["inner"]
        n_rows = ours["inner"]["rows"]
        # (name, seconds, CPU s, peak RSS MB, rows): the write floors time only their writes, inside
        # a process that also prepares the batches, so their CPU is their own and their RSS is not
        measured = [(name, r["inner"]["seconds"], r["cpu_s"], r["peak_rss_mb"], r["inner"].get("rows"))
                    for name, r in (("parse floor (orjson.loads)", floor), ("invoice_pipeline (run_source)", ours),
                                    ("dlt 1.31, Parquet loader", dlt))]
        measured += [("writes alone: the product's write_batch", writes["seconds"], writes["cpu_s"], None, writes["rows"]),
                     ("writes alone: plain DuckDB inserts, commit per batch", writes["plain_seconds"], writes["plain_cpu_s"], None, writes["rows"]),
                     ("writes alone: plain DuckDB inserts, one transaction", writes["single_seconds"], writes["single_cpu_s"], None, writes["rows"])]
        for name, secs, cpu, rss, rows in measured:
            figures.append({"invoices": size, "approach": name, "json_mb": round(mb), "rows": rows,
                            "seconds": round(secs, 2), "rows_per_s": round(n_rows / secs), "cpu_s": round(cpu, 2),
                            "peak_rss_mb": rss})
            rows_out.append([size, name, rows, secs, n_rows / secs, cpu, rss,
                             dlt["inner"]["seconds"] / secs, secs / floor["inner"]["seconds"]])
    report["flatten_load"] = figures
    return table("1. Flatten + load (pre-generated Oracle pages, DECIMAL money)",
                 ["invoices", "approach", "rows", "seconds", "rows/s", "CPU s", "peak RSS MB", "speed-up vs dlt", "x parse floor"],
                 rows_out)


EXTRACT_SOURCES = ["oracle_occ", "crmcom", "softwareone", "agvance"]


def bench_extraction(size: int, latency: float, report: dict) -> str:
    """2. Extraction only, every simulator at `latency` per request."""
    rows_out, figures = [], []
    for kind in EXTRACT_SOURCES + ["oracle_indexed"]:
        pages = ensure_pages(OUT, size) if kind == "oracle_indexed" else None
        with simulator(kind, size, latency, pages) as block:
            r = measure([PY, "-m", "benchmarks.children", "extract", json.dumps(block)])
        inner = r["inner"]
        ideal = inner["requests"] * latency / inner["concurrency"]
        figures.append({"source": kind, **inner, "cpu_s": r["cpu_s"], "peak_rss_mb": r["peak_rss_mb"], "ideal_s": round(ideal, 2),
                        "ratio_to_ideal": round(inner["seconds"] / ideal, 2)})
        rows_out.append([kind, inner["invoices"], inner["requests"], inner["seconds"], inner["requests"] / inner["seconds"],
                         ideal, inner["seconds"] / ideal, r["cpu_s"], r["peak_rss_mb"]])
    report["extraction"] = figures
    return table(f"2. Extraction, {size:,} invoices per source, {latency * 1000:.0f} ms per request, concurrency 8",
                 ["source", "invoices", "requests", "seconds", "requests/s", "ideal s", "x ideal", "CPU s", "peak RSS MB"], rows_out)


def bench_scale(sizes: list[int], report: dict) -> tuple[str, dict[int, dict]]:
    """3. `invoice-pipeline run` (Oracle, no latency) at growing sizes: time should be linear, memory flat."""
    rows_out, figures, runs = [], [], {}
    for size in sizes:
        pages = ensure_pages(OUT, size)
        work = _workdir(f"scale_{size}")
        with simulator("oracle_indexed", size, pages=pages) as block:
            config = write_config(work / "config.yaml", {"oracle": block}, work)
            r = pipeline_run(config, work)
        runs[size] = r
        secs = r["wall_s"]
        figures.append({"invoices": size, "wall_s": secs, "cpu_s": r["cpu_s"], "peak_rss_mb": r["peak_rss_mb"],
                        "source_step_s": r["sources"].get("oracle", {}).get("secs")})
        rows_out.append([size, secs, size / secs, r["sources"].get("oracle", {}).get("secs"), r["cpu_s"], r["peak_rss_mb"],
                         secs / runs[sizes[0]]["wall_s"]])
    report["scale"] = figures
    return table("3. Scale: `invoice-pipeline run`, Oracle simulator, no latency (process start, Dagster, checks, publish included)",
                 ["invoices", "wall s", "invoices/s", "source step s", "CPU s", "peak RSS MB", "wall / smallest"], rows_out), runs


def bench_noop(report: dict) -> str:
    """4. A run when nothing changed, per source, after a first full run of all four."""
    size = 2000
    work = _workdir("noop")
    pages = ensure_pages(OUT, size)
    startup = measure([PY, "-c", "import invoice_pipeline.cli, invoice_pipeline.runner, invoice_pipeline.defs, dagster"])
    with simulator("oracle_indexed", size, pages=pages) as ora, simulator("crmcom", size) as crm, \
            simulator("softwareone", size) as swo, simulator("agvance", size) as agv:
        config = write_config(work / "config.yaml", {"oracle": ora, "crm": crm, "swo": swo, "agv": agv}, work)
        first = pipeline_run(config, work)
        rows_out, figures = [], []
        for name in ("oracle", "crm", "swo", "agv"):
            r = pipeline_run(config, work, [name])
            step = r["sources"].get(name, {})
            figures.append({"source": name, "wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "peak_rss_mb": r["peak_rss_mb"],
                            "source_step_s": step.get("secs"), "api_calls": step.get("api_calls"),
                            "dagster_run_s": r["dagster_run_s"], "beyond_startup_s": round(r["wall_s"] - startup["wall_s"], 2)})
            rows_out.append([name, step.get("loaded"), step.get("api_calls"), step.get("secs"), r["dagster_run_s"],
                             r["wall_s"], r["wall_s"] - startup["wall_s"], r["cpu_s"], r["peak_rss_mb"]])
    report["noop"] = {"invoices_per_source": size, "import_startup_s": startup["wall_s"], "first_run_all_s": first["wall_s"],
                      "runs": figures}
    return table(f"4. Incremental no-op per source ({size:,} invoices each, first full run {first['wall_s']:.1f} s; "
                 f"process start-up incl. imports {startup['wall_s']:.1f} s)",
                 ["source", "loaded", "API calls", "source step s", "Dagster run s", "process wall s", "wall - imports s",
                  "CPU s", "peak RSS MB"],
                 rows_out)


def bench_end_to_end(size: int, ours: dict | None, report: dict) -> str:
    """5. Oracle extraction + load, end to end, process start included: bare client vs us vs dlt."""
    pages = ensure_pages(OUT, size)
    work = _workdir(f"e2e_{size}")
    with simulator("oracle_indexed", size, pages=pages) as block:
        base = block["base_url"]
        bare = measure([PY, "-m", "benchmarks.children", "bare_client", base, SIM_USER, SIM_PASSWORD])
        if ours is None:
            config = write_config(work / "config.yaml", {"oracle": block}, work)
            ours = pipeline_run(config, work)
        dlt = measure([PY, "-m", "benchmarks.children", "dlt_rest", base, SIM_USER, SIM_PASSWORD, str(work)])
    rows_out, figures = [], []
    for name, r in (("bare 8-thread client (fetch, discard)", bare), ("invoice-pipeline run", ours), ("dlt rest_api + Parquet", dlt)):
        figures.append({"approach": name, "wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "peak_rss_mb": r["peak_rss_mb"],
                        "x_bare": round(r["wall_s"] / bare["wall_s"], 2), "requests": r["inner"].get("requests")})
        rows_out.append([name, r["wall_s"], r["cpu_s"], r["peak_rss_mb"], r["wall_s"] / bare["wall_s"], dlt["wall_s"] / r["wall_s"]])
    report["end_to_end"] = {"invoices": size, "requests": bare["inner"].get("requests"), "runs": figures}
    return table(f"5. End to end, Oracle simulator with {size:,} invoices ({bare['inner'].get('requests'):,} responses), no latency",
                 ["approach", "wall s", "CPU s", "peak RSS MB", "x bare client", "dlt / this"], rows_out)


def bench_ui_vs_cli(size: int, report: dict) -> str:
    """6. The whole job as the UI's "Materialize all" runs it vs `invoice-pipeline run`, same work, fresh warehouses.

    The UI launches a run worker that executes the job with the definitions' executor; `dagster job
    execute` does exactly that in a new process (no webserver or daemon to time besides)."""
    pages = ensure_pages(OUT, size)
    rows_out, figures = [], {}
    with simulator("oracle_indexed", size, pages=pages) as ora, simulator("crmcom", size) as crm, \
            simulator("softwareone", size) as swo, simulator("agvance", size) as agv:
        sources = {"oracle": ora, "crm": crm, "swo": swo, "agv": agv}
        for how in ("cli", "ui_job"):
            work = _workdir(f"ui_vs_cli_{how}")
            config = write_config(work / "config.yaml", sources, work)
            if how == "cli":
                r = pipeline_run(config, work)
            else:
                from invoice_pipeline.runner import DAGSTER_YAML

                (work / "dagster_home").mkdir()
                (work / "dagster_home" / "dagster.yaml").write_text(DAGSTER_YAML)
                dagster = str(Path(PY).with_name("dagster"))
                r = measure([dagster, "job", "execute", "-m", "invoice_pipeline.definitions", "-j", "invoice_pipeline_job"],
                            env={"DAGSTER_HOME": str(work / "dagster_home"), "INVOICE_PIPELINE_CONFIG": str(config)},
                            cwd=str(work))
                r["dagster_run_s"] = _last_run_seconds(work / "dagster_home")
            figures[how] = {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "peak_rss_mb": r["peak_rss_mb"],
                            "dagster_run_s": r["dagster_run_s"]}
            rows_out.append([how, r["wall_s"], r["dagster_run_s"], r["cpu_s"], r["peak_rss_mb"]])
    ratio = figures["ui_job"]["wall_s"] / figures["cli"]["wall_s"]
    report["ui_vs_cli"] = {"invoices_per_source": size, "runs": figures, "ui_over_cli": round(ratio, 2)}
    return table(f"6. Materialize all (UI run worker) vs invoice-pipeline run, {size:,} invoices x 4 sources: "
                 f"UI / CLI = {ratio:.2f}x",
                 ["run", "process wall s", "Dagster run s", "CPU s", "peak RSS MB"], rows_out)


def bench_repoll(size: int, report: dict) -> str:
    """7. Re-poll of every open Oracle invoice (nothing changed since the load): the client's list
    comparison vs one detail call per invoice (what the re-poll cost before issue 21)."""
    pages = ensure_pages(OUT, size)
    work = _workdir(f"repoll_{size}")
    rows_out, figures = [], {}
    with simulator("oracle_indexed", size, pages=pages) as block:
        config = json.dumps(block)
        load = measure([PY, "-m", "benchmarks.children", "first_load", config, str(work)])
        for how in ("list", "details"):
            r = measure([PY, "-m", "benchmarks.children", "repoll", config, str(work), how])
            inner = r["inner"]
            figures[how] = {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "peak_rss_mb": r["peak_rss_mb"],
                            **{k: inner.get(k) for k in ("open_invoices", "api_calls", "pages", "detail_calls",
                                                         "changed", "seconds")}}
            rows_out.append([how, inner.get("open_invoices"), inner.get("api_calls"), inner.get("pages"),
                             inner.get("detail_calls"), inner.get("seconds"), r["cpu_s"], r["peak_rss_mb"]])
    report["repoll"] = {"invoices": size, "first_load_s": load["inner"].get("seconds"), "runs": figures}
    return table(f"7. Re-poll of every open Oracle invoice ({size:,} invoices, indexed simulator, q honoured, "
                 "nothing changed since the load)",
                 ["re-poll", "open invoices", "API calls", "list pages", "detail calls", "re-poll s", "CPU s",
                  "peak RSS MB"], rows_out)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": str(os.cpu_count()),
            "memory_gb": f"{psutil.virtual_memory().total / 2**30:.0f}"}
    for pkg in ("invoice-pipeline", "duckdb", "pyarrow", "orjson", "dlt", "dagster", "requests"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:  # e.g. dlt: only benchmark 5 needs it
            info[pkg] = "not installed"
    info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="add the 200k-invoice runs (benchmarks 1 and 3)")
    parser.add_argument("--only", default="1,2,3,4,5,6,7", help="comma-separated benchmark numbers")
    parser.add_argument("--repoll-invoices", type=int, default=50000,
                        help="benchmark 7 size (default 50000: ~10,000 of them open)")
    parser.add_argument("--invoices", type=int, default=20000, help="benchmark 1 size (default 20000)")
    args = parser.parse_args(argv)
    only = {int(x) for x in args.only.split(",")}
    OUT.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"versions": versions(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "load_average_at_start": os.getloadavg()}
    print(json.dumps(report["versions"]))
    texts = []
    started = time.perf_counter()
    runs: dict[int, dict] = {}
    if 1 in only:
        texts.append(bench_flatten_load([args.invoices] + ([200000] if args.full else []), report))
    if 2 in only:
        texts.append(bench_extraction(5000, 0.020, report))
    if 3 in only:
        text, runs = bench_scale([10000, 50000] + ([200000] if args.full else []), report)
        texts.append(text)
    if 4 in only:
        texts.append(bench_noop(report))
    if 5 in only:
        texts.append(bench_end_to_end(10000, runs.get(10000), report))
    if 6 in only:
        texts.append(bench_ui_vs_cli(500, report))
    if 7 in only:
        texts.append(bench_repoll(args.repoll_invoices, report))
    report["total_s"] = round(time.perf_counter() - started, 1)
    report["load_average_at_end"] = os.getloadavg()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (OUT / f"results-{stamp}.json").write_text(json.dumps(report, indent=2, default=str))
    (OUT / f"results-{stamp}.md").write_text("\n".join(texts) + "\n")
    print(f"\nfigures written to {OUT}/results-{stamp}.json (and .md); total {report['total_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
