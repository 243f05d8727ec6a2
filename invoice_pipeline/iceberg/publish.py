"""Write-audit-publish the Iceberg way: writers commit to the branch INGEST, the audit reads a pinned
snapshot of it, and `main` (what Trino, Spark, DuckDB, polars and pyiceberg read by default) is
fast-forwarded to exactly the audited snapshots only when every blocking check passes.

Why a branch and not a tag: pyiceberg 0.11 (the pinned version) writes, deletes and scans on a branch
(`branch=` / `use_ref`) and moves `main` with manage_snapshots().set_current_snapshot(); readers need no
knowledge of a tag name, and a reader of `main` can never see data the checks have not seen. The
audit runs the blocking rules of audit.py (the DuckDB backend's own) in DuckDB over Arrow, plus
one rule only this backend needs (see VERSION_RULE).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table
from pyiceberg.table.snapshots import ancestors_of

from invoice_pipeline.config import AppConfig
from invoice_pipeline.iceberg.catalog import CHILD_TABLES, CONFORMED, INGEST, VERSION, ensure_main, ensure_source, open_catalog
from invoice_pipeline.iceberg.flat import known_tables
from invoice_pipeline.audit import RULES, AuditRule, violations

log = logging.getLogger("invoice_pipeline.iceberg")

# A batch lands table by table (merge.py); until its invoices commit, its children carry a newer
# version than their invoice. Publishing then would show half a batch: refused until a re-run heals it.
VERSION_RULE = AuditRule(
    "children_match_invoice_version",
    "every conformed child row carries its invoice's last_modified_at (no half-written batch)",
    " UNION ALL ".join(
        f"SELECT c.source_name, c.invoice_id, '{t} written with version ' || c.{VERSION} || ', invoice has ' "
        f"|| i.last_modified_at AS detail FROM main.{t} c JOIN main.invoices i USING (source_name, invoice_id) "
        f"WHERE c.{VERSION} IS DISTINCT FROM i.last_modified_at" for t in CHILD_TABLES)
    + " UNION ALL SELECT f.source_name, f.invoice_id, 'flattened root written with version ' || f.version "
      "|| ', invoice has ' || coalesce(i.last_modified_at::VARCHAR, 'none') AS detail FROM _flat_versions f "
      "LEFT JOIN main.invoices i USING (source_name, invoice_id) WHERE f.version IS DISTINCT FROM i.last_modified_at")
BLOCKING_RULES = [r for r in RULES if r.blocking] + [VERSION_RULE]
ALL_RULES = [*RULES, VERSION_RULE]  # the warnings too: what the Dagster checks report (defs/iceberg_assets.py)


@dataclass
class PublishResult:
    published: bool
    snapshots: dict[str, int | None] = field(default_factory=dict)  # table -> the snapshot now on main
    failures: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)  # rule -> first violations
    rows: dict[str, int] = field(default_factory=dict)


def _pinned(tables: dict[str, Table]) -> dict[str, int | None]:
    out = {}
    for name, table in tables.items():
        table.refresh()
        ref = table.metadata.refs.get(INGEST)
        out[name] = ref.snapshot_id if ref is not None else None
    return out


def audit_rules(tables: dict[str, Table], pinned: dict[str, int | None], sources: list[str] = (),
                rules: list[AuditRule] = BLOCKING_RULES, limit: int = 5,
                ) -> tuple[dict[str, tuple[int, list[tuple[str, str, str]]]], dict[str, int]]:
    """rule -> (violations, the first `limit`) over the pinned INGEST snapshots of the conformed tables
    (DuckDB over Arrow), and the rows of each conformed table audited."""
    con = duckdb.connect()
    rows = {}
    try:
        for name in CONFORMED:
            table = tables[name]
            scan = table.scan(snapshot_id=pinned[name]) if pinned[name] is not None else None
            arrow = scan.to_arrow() if scan is not None else table.schema().as_arrow().empty_table()
            rows[name] = arrow.num_rows
            con.register(f"_ice_{name}", arrow)
            con.execute(f"CREATE VIEW main.{name} AS SELECT * FROM _ice_{name}")
        # each source's flattened root (written before the conformed tables): its versions
        flat = [pa.table({"source_name": pa.array([source] * t.num_rows, pa.string()), "invoice_id": t.column("_invoice_id"),
                          "version": t.column("_last_modified_at")})
                for source in sources if f"{source}.invoices" in tables and pinned.get(f"{source}.invoices") is not None
                for t in [tables[f"{source}.invoices"].scan(snapshot_id=pinned[f"{source}.invoices"],
                                                            selected_fields=("_invoice_id", "_last_modified_at")).to_arrow()]]
        flat_versions = pa.concat_tables(flat) if flat else pa.table(
            {"source_name": pa.array([], pa.string()), "invoice_id": pa.array([], pa.string()),
             "version": pa.array([], pa.timestamp("us", tz="UTC"))})
        con.register("_flat_versions", flat_versions)
        found = {}
        for rule in rules:
            total = con.execute(f"SELECT count(*) FROM ({rule.sql})").fetchone()[0]
            found[rule.name] = (total, violations(con, rule, limit=limit) if total else [])
        return found, rows
    finally:
        con.close()


def audit(tables: dict[str, Table], pinned: dict[str, int | None], sources: list[str] = (),
          limit: int = 5) -> tuple[dict, dict[str, int]]:
    """The blocking rules over the pinned INGEST snapshots: rule -> first violations, for failed rules only."""
    found, rows = audit_rules(tables, pinned, sources, BLOCKING_RULES, limit)
    return {rule: first for rule, (total, first) in found.items() if total}, rows


def pin(app: AppConfig) -> tuple[dict[str, Table], dict[str, int | None]]:
    """Every table publish moves (conformed, and each configured source's own) and its current INGEST
    snapshot: the union of what all writers committed so far."""
    ice = app.warehouse.iceberg
    assert ice is not None
    catalog = open_catalog(ice)
    tables = {n: t for n, t in ensure_main(catalog).items() if n in CONFORMED}
    for source in app.sources:
        tables.update({f"{source}.{n}": t for n, t in ensure_source(catalog, source).items()})
        tables.update({f"{source}.{n}": t for n, t in known_tables(catalog, source).items()})
    return tables, _pinned(tables)


def _behind(table: Table, snapshot_id: int) -> bool:
    """Whether `main` is an older snapshot of the audited one's history: only then does it move (so a
    slower publish of older snapshots never takes `main` back behind a faster, later one)."""
    main = table.metadata.refs.get("main")
    if main is None:
        return True
    if main.snapshot_id == snapshot_id:
        return False
    audited = table.metadata.snapshot_by_id(snapshot_id)
    return any(s.snapshot_id == main.snapshot_id for s in ancestors_of(audited, table.metadata))


def publish(app: AppConfig) -> PublishResult:
    """Audit what every writer committed so far (the union of all sources) and publish it if clean."""
    tables, pinned = pin(app)
    failures, rows = audit(tables, pinned, list(app.sources))
    if failures:
        log.error("Iceberg publish refused, blocking checks failed: %s",
                  "; ".join(f"{rule}: {len(v)}+ e.g. {v[0][0]}/{v[0][1]}: {v[0][2]}" for rule, v in failures.items()))
        return PublishResult(False, {}, failures, rows)
    for name, table in tables.items():
        snapshot = pinned[name]
        if snapshot is None:
            continue
        for _ in range(20):  # only another publish moves main: retry on its conflict
            if not _behind(table, snapshot):  # there already, or a later publish moved it further
                break
            try:
                table.manage_snapshots().set_current_snapshot(snapshot_id=snapshot).commit()
                break
            except CommitFailedException:
                table.refresh()
        else:  # pragma: no cover - twenty publishes at once
            raise RuntimeError(f"could not fast-forward {name} to snapshot {snapshot}: other publishes kept winning")
    log.info("Iceberg publish: main fast-forwarded to the audited snapshots of %d tables", len(tables))
    return PublishResult(True, pinned, {}, rows)
