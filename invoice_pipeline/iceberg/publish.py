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
from datetime import UTC, datetime

import duckdb
import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table
from pyiceberg.table.snapshots import ancestors_of

from invoice_pipeline.config import AppConfig
from invoice_pipeline.iceberg.catalog import (CHILD_TABLES, CONFORMED, HISTORY, INGEST, MAIN, TS, VERSION, ensure_main, ensure_source,
                                              ensure_table, open_catalog)
from invoice_pipeline.iceberg.flat import known_tables
from invoice_pipeline.iceberg.history import HISTORY_RULES
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
BLOCKING_RULES = [r for r in RULES if r.blocking] + [VERSION_RULE, *HISTORY_RULES]
ALL_RULES = [*RULES, VERSION_RULE, *HISTORY_RULES]  # the warnings too: what the Dagster checks report (defs/iceberg_assets.py)


# main._published: one row per table per publish, the snapshots that publish audited AS A SET, appended
# in one commit (atomic). `main` moves table by table; a reader that needs every table from the same
# audit reads the newest publish_seq's snapshots (read_published below; docs/ICEBERG.md, "Consistency").
MANIFEST = "_published"
MANIFEST_SCHEMA = pa.schema([("publish_seq", pa.int64()), ("published_at", TS), ("table_name", pa.string()),
                             ("snapshot_id", pa.int64())])


@dataclass
class PublishResult:
    published: bool
    snapshots: dict[str, int | None] = field(default_factory=dict)  # table -> the snapshot now on main
    failures: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)  # rule -> first violations
    rows: dict[str, int] = field(default_factory=dict)
    publish_seq: int | None = None  # the main._published row set this publish wrote (None: a newer one was there)


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
        for name in (*CONFORMED, HISTORY):
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
    tables = {n: t for n, t in ensure_main(catalog).items() if n in (*CONFORMED, HISTORY)}
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
    seq = _record_manifest(tables, pinned)
    log.info("Iceberg publish: main fast-forwarded to the audited snapshots of %d tables (publish_seq %s)",
             len(tables), seq)
    return PublishResult(True, pinned, {}, rows, seq)


def _qualified(name: str) -> str:
    return name if "." in name else f"{MAIN}.{name}"


def _latest_manifest(manifest: Table) -> tuple[int, dict[str, int]]:
    """The newest publish_seq and its table -> snapshot id (0, {} before the first publish)."""
    manifest.refresh()
    if manifest.current_snapshot() is None:
        return 0, {}
    rows = manifest.scan().to_arrow()
    if not rows.num_rows:
        return 0, {}
    seq = max(rows.column("publish_seq").to_pylist())
    return seq, {r["table_name"]: r["snapshot_id"] for r in rows.to_pylist() if r["publish_seq"] == seq}


def _not_older(table: Table, ours: int, theirs: int | None) -> bool:
    if theirs is None or theirs == ours:
        return True
    table.refresh()
    audited = table.metadata.snapshot_by_id(ours)
    return any(s.snapshot_id == theirs for s in ancestors_of(audited, table.metadata))


def _record_manifest(tables: dict[str, Table], pinned: dict[str, int | None]) -> int | None:
    """Append this publish's audited set as publish_seq = newest + 1, unless a concurrent publish already
    recorded a set that is newer for some table: sets are never mixed (each was audited as a whole), and
    the newest publish_seq never goes back. The append asserts the manifest's snapshot (optimistic
    commit), so two publishes cannot both take the same publish_seq."""
    first = next(iter(tables.values()))
    manifest = ensure_table(first.catalog, MAIN, MANIFEST, MANIFEST_SCHEMA)
    ours = {_qualified(n): s for n, s in pinned.items() if s is not None}
    for _ in range(20):
        seq, latest = _latest_manifest(manifest)
        if not all(_not_older(tables[n], s, latest.get(_qualified(n))) for n, s in pinned.items() if s is not None):
            log.info("Iceberg publish: publish_seq %d of a concurrent publish is newer; not recorded", seq)
            return None
        now = datetime.now(UTC)
        rows = pa.table({"publish_seq": pa.array([seq + 1] * len(ours), pa.int64()),
                         "published_at": pa.array([now] * len(ours), TS),
                         "table_name": pa.array(list(ours), pa.string()),
                         "snapshot_id": pa.array(list(ours.values()), pa.int64())}, schema=MANIFEST_SCHEMA)
        try:
            manifest.append(rows)
            return seq + 1
        except CommitFailedException:
            continue
    raise RuntimeError(f"could not record publish in {MAIN}.{MANIFEST}: other publishes kept winning")


def published_snapshots(app: AppConfig) -> tuple[int, dict[str, int]]:
    """The newest publish's publish_seq and its "namespace.table" -> snapshot id (audited together)."""
    catalog = open_catalog(app.warehouse.iceberg)
    return _latest_manifest(ensure_table(catalog, MAIN, MANIFEST, MANIFEST_SCHEMA))


def read_published(app: AppConfig, namespace: str, table: str, snapshots: dict[str, int] | None = None) -> pa.Table:
    """A table as the newest publish audited it: read several tables with the same `snapshots`
    (published_snapshots()) and they come from one audit, even while another publish moves `main`."""
    catalog = open_catalog(app.warehouse.iceberg)
    snapshots = published_snapshots(app)[1] if snapshots is None else snapshots
    ice = catalog.load_table((namespace, table))
    snapshot = snapshots.get(f"{namespace}.{table}")
    if snapshot is None:
        return ice.schema().as_arrow().empty_table()
    return ice.scan(snapshot_id=snapshot).to_arrow()
