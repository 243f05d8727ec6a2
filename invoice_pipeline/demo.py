"""`invoice-pipeline demo`: the whole pipeline on the built-in simulators, twice, with changes between."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

from invoice_pipeline.config import load_config
from invoice_pipeline.runner import run_pipeline
from invoice_pipeline.simulate import config_document, start_simulators, write_config
from invoice_pipeline.warehouse import Warehouse, quote

log = logging.getLogger("invoice_pipeline.demo")
DEMO_CONFIG = Path("data/demo.yaml")
EXAMPLE_QUERIES = [
    ("Open receivables by source and currency",
     "SELECT source_name, currency_code, count(*) AS open_invoices, sum(balance_due) AS owed\n"
     "FROM invoices WHERE NOT is_void AND balance_due <> 0 GROUP BY ALL ORDER BY owed DESC;"),
    ("Top customers by amount owed",
     "SELECT customer_name, sum(balance_due) AS owed FROM invoices GROUP BY ALL ORDER BY owed DESC LIMIT 10;"),
    ("Tax collected by code",
     "SELECT source_name, tax_code, sum(tax_amount) AS tax FROM invoice_tax_lines GROUP BY ALL ORDER BY tax DESC;"),
]


def _snapshot(wh: Warehouse, sources: list[str]) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    with wh.writer() as con:
        for table in ("invoices", "invoice_lines", "invoice_tax_lines", "invoice_installments"):
            for source, n in con.execute(f"SELECT source_name, count(*) FROM main.{table} GROUP BY 1").fetchall():
                counts[(source, f"main.{table}")] = n
        for source in sources:
            for name in wh.source_tables(con, source).values():
                counts[(source, f"{source}.{name}")] = con.execute(f"SELECT count(*) FROM {quote(source)}.{quote(name)}").fetchone()[0]
    return counts


def _print_counts(before: dict, after: dict) -> None:
    print(f"  {'source':14s} {'table':70s} {'rows':>8s} {'change':>8s}")
    for key in sorted(after):
        delta = after[key] - before.get(key, 0)
        print(f"  {key[0]:14s} {key[1][:70]:70s} {after[key]:>8d} {delta:>+8d}")


def run_demo(size: int = 300) -> int:
    with ExitStack() as stack:
        sims = start_simulators(stack, size=size)
        config_path = write_config(config_document(sims), DEMO_CONFIG)
        app = load_config(config_path)
        wh = Warehouse(app.warehouse)
        print(f"demo: {len(sims)} simulated sources ({', '.join(sims)}), {size} invoices each; config {config_path}")

        before = _snapshot(wh, list(sims)) if wh.path.exists() else {}
        print("\n== run 1: initial load")
        report = run_pipeline(app, str(config_path))
        _print_run(report)
        if not report.success:
            return 1
        after_first = _snapshot(wh, list(sims))
        _print_counts(before, after_first)

        print("\n== changing the sources: updates, new invoices, voids, deleted lines")
        for name, sim in sims.items():
            touched = sim.mutate(updates=5, new=3, voids=2, delete_lines=2, seed=7)
            print(f"  {name}: " + ", ".join(f"{k} {len(v) if hasattr(v, '__len__') else v}" for k, v in touched.items()))

        print("\n== run 2: incremental")
        report = run_pipeline(app, str(config_path))
        _print_run(report)
        if not report.success:
            return 1
        print("  what the incremental run changed:")
        _print_counts(after_first, _snapshot(wh, list(sims)))

    print(f"\nWarehouse (read-write, the pipeline's): {app.warehouse.duckdb_path}")
    print(f"Published snapshot (read-only, for analysts/BI): {app.warehouse.published_path}")
    print(f"Parquet lake: {app.warehouse.parquet_dir}/<table>/source_name=<source>/*.parquet")
    print("\nTry (duckdb CLI or python -c \"import duckdb; ...\") against the published snapshot:")
    for title, sql in EXAMPLE_QUERIES:
        print(f"  -- {title}\n  {sql.replace(chr(10), chr(10) + '  ')}")
    return 0


def _print_run(report) -> None:
    from invoice_pipeline.cli import _print_report

    _print_report(report)
    if report.published:
        print("  blocking checks passed; snapshot and Parquet published")
