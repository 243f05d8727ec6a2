"""Iceberg vs DuckDB backends (docs/ICEBERG.md), on this machine.

    .venv/bin/python -m benchmarks.iceberg_bench                 # 20,000 Oracle invoices; 4 x 2,000 mixed
    .venv/bin/python -m benchmarks.iceberg_bench --oracle 5000 --each 500

1. N Oracle invoices (the indexed simulator of benchmarks/sims.py, in its own process) loaded by one
   `run_source` into DuckDB, then into Iceberg (SQLite catalog, local folder): wall, CPU, peak RSS.
2. The four sources (Oracle, CRM.COM, SoftwareOne, Agvance; M invoices each) into Iceberg: by one
   process one after the other, vs four processes at once (each its own source). Memory is the peak
   RSS of the whole process tree. Both go through pipeline.run_source, the seam the backends share.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import yaml

from benchmarks.__main__ import OUT, PY, _workdir, measure, simulator, table
from benchmarks.sims import ensure_pages


def _config(work: Path, sources: dict[str, dict], backend: str) -> Path:
    warehouse: dict = {"duckdb_path": str(work / "warehouse.duckdb"),
                       "published_path": str(work / "published" / "warehouse.duckdb"),
                       "parquet_dir": str(work / "parquet")}
    if backend == "iceberg":
        (work / "iceberg").mkdir(exist_ok=True)
        warehouse.update(backend="iceberg", iceberg={"catalog_uri": f"sqlite:///{work / 'iceberg' / 'catalog.db'}",
                                                     "warehouse": f"file://{work / 'iceberg' / 'data'}"})
    path = work / f"{backend}.yaml"
    path.write_text(yaml.safe_dump({"warehouse": warehouse, "sources": sources}, sort_keys=False))
    return path


def worker(config: str, sources: list[str]) -> None:
    """Child: run_source for each source in turn; one JSON line with what it loaded and how long."""
    from invoice_pipeline.config import load_config
    from invoice_pipeline.pipeline import run_source

    app = load_config(config)
    out = {}
    for name in sources:
        started = time.perf_counter()
        s = run_source(app, name)
        out[name] = {"loaded": s.invoices_loaded, "secs": round(time.perf_counter() - started, 2),
                     "conflicts": s.extra.get("commit_conflicts", 0)}
    print(json.dumps(out), flush=True)


def parallel(config: str, sources: list[str]) -> None:
    """Child: one worker process per source, all at once."""
    procs = [subprocess.Popen([PY, "-m", "benchmarks.iceberg_bench", "worker", config, s], stdout=subprocess.PIPE,
                              text=True) for s in sources]
    out = {}
    for p in procs:
        text, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"a worker failed ({p.returncode})")
        out.update(json.loads(text.strip().splitlines()[-1]))
    print(json.dumps(out), flush=True)


def bench_oracle(size: int) -> tuple[str, list[dict]]:
    pages = ensure_pages(OUT, size)
    rows, figures = [], []
    for backend in ("duckdb", "iceberg"):
        work = _workdir(f"iceberg_bench_oracle_{backend}")
        with simulator("oracle_indexed", size, pages=pages) as block:
            config = _config(work, {"oracle": block}, backend)
            r = measure([PY, "-m", "benchmarks.iceberg_bench", "worker", str(config), "oracle"])
        inner = r["inner"]["oracle"]
        figures.append({"backend": backend, "invoices": inner["loaded"], **{k: r[k] for k in ("wall_s", "cpu_s", "peak_rss_mb")},
                        "load_s": inner["secs"]})
        rows.append([backend, inner["loaded"], inner["secs"], inner["loaded"] / inner["secs"], r["cpu_s"], r["peak_rss_mb"]])
    return table(f"{size:,} Oracle invoices: DuckDB vs Iceberg (one run_source, SQLite catalog, local folder)",
                 ["backend", "invoices", "load s", "invoices/s", "CPU s", "peak RSS MB"], rows), figures


def bench_four(each: int, oracle_pages: Path) -> tuple[str, list[dict]]:
    rows, figures = [], []
    kinds = {"oracle": "oracle_indexed", "crmcom": "crmcom", "softwareone": "softwareone", "agvance": "agvance"}
    for mode in ("one process", "four processes"):
        work = _workdir(f"iceberg_bench_four_{mode.replace(' ', '_')}")
        with ExitStack() as stack:
            blocks = {name: stack.enter_context(simulator(kind, each, pages=oracle_pages if kind == "oracle_indexed" else None))
                      for name, kind in kinds.items()}
            config = _config(work, blocks, "iceberg")
            r = measure([PY, "-m", "benchmarks.iceberg_bench", "worker" if mode == "one process" else "parallel",
                         str(config), *kinds])
        loaded = sum(v["loaded"] for v in r["inner"].values())
        conflicts = sum(v["conflicts"] for v in r["inner"].values())
        figures.append({"mode": mode, "invoices": loaded, **{k: r[k] for k in ("wall_s", "cpu_s", "peak_rss_mb")},
                        "commit_conflicts": conflicts})
        rows.append([mode, loaded, r["wall_s"], loaded / r["wall_s"], r["cpu_s"], r["peak_rss_mb"], conflicts])
    return table(f"Four sources x {each:,} invoices into Iceberg: one process vs four at once",
                 ["loaded by", "invoices", "wall s", "invoices/s", "CPU s", "peak RSS MB", "commit conflicts retried"],
                 rows), figures


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("worker", "parallel"):
        (worker if sys.argv[1] == "worker" else parallel)(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks.iceberg_bench")
    parser.add_argument("--oracle", type=int, default=20_000)
    parser.add_argument("--each", type=int, default=2_000)
    args = parser.parse_args()
    report = {}
    text, report["oracle"] = bench_oracle(args.oracle)
    text2, report["four"] = bench_four(args.each, ensure_pages(OUT, args.each))
    (OUT / "iceberg_bench.json").write_text(json.dumps(report, indent=1))
    (OUT / "iceberg_bench.md").write_text(text + "\n" + text2 + "\n")


if __name__ == "__main__":
    main()
