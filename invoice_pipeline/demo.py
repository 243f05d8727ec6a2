"""`invoice-pipeline demo`: the whole pipeline on the built-in simulators, twice, with changes between.

The second run is incremental. What it changed is read back from the warehouse (not from the
simulators) and printed next to what each simulator says it changed, so a mismatch shows.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from invoice_pipeline.config import load_config
from invoice_pipeline.conformed import CONFORMED_TABLES
from invoice_pipeline.runner import RunReport, print_report, run_pipeline
from invoice_pipeline.simulate import config_document, start_simulators, write_config
from invoice_pipeline.warehouse import Warehouse, quote

log = logging.getLogger("invoice_pipeline.demo")
# The demo's own data set, warehouse and Dagster instance: never the one `simulate` + `dagster dev` use
# (data/warehouse.duckdb), whose simulators serve another data set.
DEMO_DIR = Path("data/demo")
DEMO_CONFIG = DEMO_DIR / "config.yaml"
DEMO_WAREHOUSE = {"duckdb_path": str(DEMO_DIR / "warehouse.duckdb"),
                  "published_path": str(DEMO_DIR / "published" / "warehouse.duckdb"),
                  "parquet_dir": str(DEMO_DIR / "parquet")}
# What the demo asks every simulator to change between the runs (mutate() keywords).
MUTATIONS = {"updates": 5, "new": 3, "voids": 2, "delete_lines": 2}
# The kinds of change, as every simulator's mutate() reports them and as the warehouse shows them.
CHANGE_KINDS = ("updated", "new", "voided", "lines_deleted")
EXAMPLE_QUERIES = [
    ("Open receivables by source and currency (credit memos netted in, drafts and voids left out)",
     "SELECT source_name, currency_code, count(*) AS open_documents, sum(balance_due) AS owed\n"
     "FROM invoices WHERE status_category = 'open' AND NOT is_deleted GROUP BY ALL ORDER BY ALL;"),
    ("Top customers by amount owed, per currency",
     "SELECT currency_code, customer_name, sum(balance_due) AS owed FROM ar_open_items\n"
     "GROUP BY ALL ORDER BY currency_code, owed DESC LIMIT 10;"),
    ("Tax collected by code and currency",
     "SELECT t.source_name, t.currency_code, t.tax_code, sum(t.tax_amount) AS tax FROM invoice_tax_lines t\n"
     "JOIN invoices i USING (source_name, invoice_id) WHERE i.status_category IN ('open', 'paid') AND NOT i.is_deleted\n"
     "GROUP BY ALL ORDER BY ALL;"),
]

Counts = dict[tuple[str, str], int]  # (source, schema.table) -> rows


@dataclass(frozen=True)
class InvoiceState:
    """What the warehouse knows of one invoice: enough to tell how a later run changed it."""

    last_modified_at: datetime | None
    is_void: bool
    line_ids: frozenset[str]


def _row_counts(wh: Warehouse, sources: list[str]) -> Counts:
    counts: Counts = {}
    with wh.writer() as con:
        for table in CONFORMED_TABLES:
            for source, n in con.execute(f"SELECT source_name, count(*) FROM main.{table} GROUP BY 1").fetchall():
                counts[(source, f"main.{table}")] = n
        for source in sources:
            for name in wh.source_tables(con, source).values():
                counts[(source, f"{source}.{name}")] = con.execute(f"SELECT count(*) FROM {quote(source)}.{quote(name)}").fetchone()[0]
    return counts


def _invoice_states(wh: Warehouse) -> dict[tuple[str, str], InvoiceState]:
    with wh.writer() as con:
        rows = con.execute(
            """SELECT i.source_name, i.invoice_id, i.last_modified_at, coalesce(i.is_void, false),
                      list(l.line_id) FILTER (WHERE l.line_id IS NOT NULL)
               FROM main.invoices i LEFT JOIN main.invoice_lines l USING (source_name, invoice_id)
               GROUP BY ALL"""
        ).fetchall()
    return {(s, i): InvoiceState(m, v, frozenset(map(str, lines or []))) for s, i, m, v, lines in rows}


def classify_changes(before: dict[tuple[str, str], InvoiceState], after: dict[tuple[str, str], InvoiceState]
                     ) -> dict[str, dict[str, list[str]]]:
    """Per source, the invoices a run added, voided, cut lines from or otherwise updated (one kind each)."""
    changes: dict[str, dict[str, list[str]]] = {}
    for (source, invoice_id), now in sorted(after.items()):
        then = before.get((source, invoice_id))
        if then is None:
            kind = "new"
        elif now.is_void and not then.is_void:
            kind = "voided"
        elif then.line_ids - now.line_ids:
            kind = "lines_deleted"
        elif now != then:
            kind = "updated"
        else:
            continue
        changes.setdefault(source, {k: [] for k in CHANGE_KINDS})[kind].append(invoice_id)
    return changes


def _describe(kinds: dict[str, list[str]]) -> str:
    return ", ".join(f"{kind} {len(kinds.get(kind, []))}" for kind in CHANGE_KINDS)


def _print_counts(before: Counts, after: Counts, written: dict[str, dict[str, int]] | None = None) -> None:
    """Rows per source and table; with `written`, also the rows the run (re)wrote in that table."""
    extra = f" {'written':>8s}" if written is not None else ""
    print(f"  {'source':14s} {'table':66s} {'rows':>8s} {'change':>8s}{extra}")
    for source, table in sorted(after):
        delta = after[(source, table)] - before.get((source, table), 0)
        line = f"  {source:14s} {table[:66]:66s} {after[(source, table)]:>8d} {delta:>+8d}"
        if written is not None:  # flattened tables only; the conformed rows follow the same invoices
            schema, name = table.split(".", 1)
            n = written.get(source, {}).get(name) if schema == source else None
            line += f" {n if n is not None else '':>8}"
        print(line)


def _print_run(report: RunReport) -> None:
    print_report(report)
    if report.published:
        print("  blocking checks passed; snapshot and Parquet published")


def run_demo(size: int = 300) -> int:
    with ExitStack() as stack:
        sims = start_simulators(stack, size=size)
        sources = list(sims)
        config_path = write_config(config_document(sims, warehouse=DEMO_WAREHOUSE), DEMO_CONFIG)
        app = load_config(config_path)
        wh = Warehouse(app.warehouse)
        print(f"demo: {len(sims)} simulated sources ({', '.join(sims)}), {size} invoices each; config {config_path}")

        before = _row_counts(wh, sources) if wh.path.exists() else {}
        print("\n== run 1: initial load")
        report = run_pipeline(app, str(config_path))
        _print_run(report)
        if not report.success:
            return 1
        after_first = _row_counts(wh, sources)
        _print_counts(before, after_first)
        states_first = _invoice_states(wh)

        print("\n== changing the sources (as each simulator reports it)")
        at_source: dict[str, dict[str, list[str]]] = {}
        for name, sim in sims.items():
            at_source[name] = sim.mutate(**MUTATIONS, seed=7)
            print(f"  {name:14s} {_describe(at_source[name])}")

        print("\n== run 2: incremental")
        report = run_pipeline(app, str(config_path))
        _print_run(report)
        if not report.success:
            return 1
        seen = classify_changes(states_first, _invoice_states(wh))
        print("  what the incremental run changed, per source (read back from the warehouse):")
        for name in sources:
            kinds = seen.get(name, {})
            agrees = all(sorted(kinds.get(k, [])) == sorted(at_source[name].get(k, [])) for k in CHANGE_KINDS)
            print(f"  {name:14s} {_describe(kinds)}  "
                  f"({'same invoices as the simulator changed' if agrees else 'DIFFERS from what the simulator changed'})")
        print("  per table (written = rows the incremental run wrote, replacing the changed invoices' rows):")
        written = {name: meta.get("rows_written") or {} for name, meta in report.sources.items()}
        _print_counts(after_first, _row_counts(wh, sources), written)

    print(f"\nWarehouse (read-write, the pipeline's): {app.warehouse.duckdb_path}")
    print(f"Published snapshot (read-only, for analysts/BI): {app.warehouse.published_path}")
    print(f"Parquet lake: {app.warehouse.parquet_dir}/<table>/source_name=<source>/invoice_month=YYYY-MM/*.parquet")
    print("\nTry (duckdb CLI or python -c \"import duckdb; ...\") against the published snapshot:")
    for title, sql in EXAMPLE_QUERIES:
        print(f"  -- {title}\n  {sql.replace(chr(10), chr(10) + '  ')}")
    return 0
