"""Schema drift of a source's payloads: fields new in a run, fields it no longer sends, fields whose
JSON type changed (docs/TOOLING.md, "Schema drift").

The flattened tables already absorb every change (new paths become new columns, values are kept as
text), so a load never breaks; drift is about telling people. Per source run:
- new fields: paths the warehouse's name registry (`<source>._tables` / `._columns`) gained in this
  run, i.e. exactly the columns and tables the run added;
- type changes and vanished fields: the JSON types of this run's new payload versions (up to
  SAMPLE_PAYLOADS of them) against `main._schema_fields`, the record of every (path, JSON type)
  seen per source; "vanished" only when the run brought at least MIN_FOR_VANISHED payloads;
- `schema_contract: freeze` (a source config key; default `evolve`) records new fields as not
  accepted, and the source's `schema_drift` check (blocking under freeze) fails until they are:
  a run under `evolve` accepts every field it records.
Paths read like `invoices.erpData__dueDate` (table path, then the field path, nested keys joined by
`__`) or `invoices__lines.amount` (a field of the child table of the `lines` array).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import duckdb
import orjson

from invoice_pipeline.flatten import FIELD, ROOT_TABLE, SEP
from invoice_pipeline.sql import quote

log = logging.getLogger("invoice_pipeline.drift")

FIELDS_TABLE = "main._schema_fields"
SAMPLE_PAYLOADS = 5000  # payload versions of a run read for types (the new-field detection is exact)
MIN_FOR_VANISHED = 50  # fewer payloads than this say too little about what a source stopped sending
SHOW = 20  # paths named per kind in the log line and the check's description

Path = tuple[str, str]  # (table path, field path)


def display(path: Path) -> str:
    table, name = path
    return f"{table}.{name[len(FIELD):] if name.startswith(FIELD) else name}"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    return "array"


def observe(payload: dict[str, Any], out: dict[Path, set[str]], table: str = ROOT_TABLE, prefix: str = FIELD) -> None:
    """Add every (table path, field path) of a payload and its JSON type, in the flattening's notation
    (invoice_pipeline/flatten.py): nested objects join keys with `__`, arrays holding objects are child tables."""
    for key, value in payload.items():
        path = prefix + str(key)
        if isinstance(value, dict) and value:
            observe(value, out, table, path + SEP)
        elif isinstance(value, list) and any(isinstance(item, dict | list) for item in value):
            child = f"{table}{SEP}{path[len(FIELD):]}"
            for item in value:
                if isinstance(item, dict):
                    observe(item, out, child, FIELD)
                else:
                    out[(child, FIELD + "value")].add(_json_type(item))
        else:
            out[(table, path)].add(_json_type(value))


def registry_paths(con: duckdb.DuckDBPyConnection, source: str) -> set[Path]:
    """Every (table path, field path) the warehouse has a column for."""
    s = quote(source)
    exists = con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
                         "AND schema_name = ? AND table_name = '_columns'", [source]).fetchone()[0]
    if not exists:
        return set()
    return set(con.execute(
        f"""SELECT coalesce(t.table_path, c.table_name), c.field_path FROM {s}._columns c
            LEFT JOIN {s}._tables t ON t.table_name = c.table_name""").fetchall())


@dataclass
class DriftReport:
    source: str
    contract: str
    baseline: bool = False  # the first run recorded: nothing to compare with
    payloads: int = 0
    new: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    type_changed: list[str] = field(default_factory=list)  # "path: number -> string"
    unaccepted: list[str] = field(default_factory=list)  # frozen contract: new fields not accepted yet

    @property
    def drifted(self) -> bool:
        return bool(self.new or self.vanished or self.type_changed)

    @property
    def passed(self) -> bool:
        return not self.drifted and not self.unaccepted

    def line(self) -> str:
        def some(items: list[str]) -> str:
            return ", ".join(items[:SHOW]) + (f", ... ({len(items)} in all)" if len(items) > SHOW else "")

        parts = [f"{len(self.new)} new: {some(self.new)}" if self.new else "",
                 f"{len(self.type_changed)} changed type: {some(self.type_changed)}" if self.type_changed else "",
                 f"{len(self.vanished)} not sent any more (in {self.payloads} payloads): {some(self.vanished)}"
                 if self.vanished else "",
                 f"{len(self.unaccepted)} new fields not accepted by the frozen contract: {some(self.unaccepted)}"
                 if self.unaccepted else ""]
        return f"source '{self.source}': schema drift: " + "; ".join(p for p in parts if p)

    def metadata(self) -> dict[str, Any]:
        return {"schema_contract": self.contract, "fields_new": self.new, "fields_vanished": self.vanished,
                "fields_type_changed": self.type_changed, "fields_not_accepted": self.unaccepted,
                "payloads_compared": self.payloads, "baseline": self.baseline}


def _ensure_fields_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"""CREATE TABLE IF NOT EXISTS {FIELDS_TABLE} (source_name VARCHAR, table_path VARCHAR,
        field_path VARCHAR, json_type VARCHAR, first_seen_run VARCHAR, first_seen_at TIMESTAMPTZ, accepted BOOLEAN)""")


def detect_drift(con: duckdb.DuckDBPyConnection, source: str, run_id: str, before: set[Path],
                 contract: str = "evolve") -> DriftReport:
    """Compare this run with what was recorded, record what it saw, and report (a writer connection)."""
    report = DriftReport(source, contract)
    _ensure_fields_table(con)
    s = quote(source)
    payloads = [row[0] for row in con.execute(
        f"SELECT payload FROM {s}._raw_invoices WHERE run_id = ? LIMIT {SAMPLE_PAYLOADS}", [run_id]).fetchall()]
    report.payloads = len(payloads)
    seen: dict[Path, set[str]] = defaultdict(set)
    for text in payloads:
        try:
            payload = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue
        if isinstance(payload, dict):
            observe(payload, seen)
    after = registry_paths(con, source)
    stored: dict[Path, set[str]] = defaultdict(set)
    for table, name, json_type in con.execute(
            f"SELECT table_path, field_path, json_type FROM {FIELDS_TABLE} WHERE source_name = ?", [source]).fetchall():
        stored[(table, name)].add(json_type)
    report.baseline = not before and not stored
    if not stored and before:  # a warehouse loaded before drift was recorded: what it has is the baseline
        stored.update({path: set() for path in before})
    accepted = contract != "freeze" or report.baseline
    if not report.baseline:
        report.new = sorted(display(p) for p in (after - before) | (set(seen) - set(stored) - before))
        for path, types in sorted(seen.items()):
            old = {t for t in stored.get(path, set()) if t not in ("null", "unknown")}
            fresh = {t for t in types if t != "null"} - old
            if old and fresh:
                report.type_changed.append(f"{display(path)}: {'|'.join(sorted(old))} -> {'|'.join(sorted(fresh))}")
        if report.payloads >= MIN_FOR_VANISHED:
            report.vanished = sorted(display(p) for p in stored if p not in seen)
    # A new type of a known field is recorded accepted: the contract freezes the set of fields.
    rows = [(source, t, f, json_type, run_id, accepted or (t, f) in stored) for (t, f), types in seen.items()
            for json_type in types if json_type not in stored.get((t, f), set())]
    rows += [(source, t, f, "unknown", run_id, accepted) for (t, f) in after - set(seen) if (t, f) not in stored]
    if rows:
        con.executemany(f"INSERT INTO {FIELDS_TABLE} VALUES (?, ?, ?, ?, ?, now(), ?)", rows)
    if contract != "freeze":
        con.execute(f"UPDATE {FIELDS_TABLE} SET accepted = true WHERE source_name = ? AND NOT accepted", [source])
    else:
        report.unaccepted = sorted({display((t, f)) for t, f in con.execute(
            f"SELECT table_path, field_path FROM {FIELDS_TABLE} WHERE source_name = ? AND NOT accepted",
            [source]).fetchall()})
    if report.drifted or report.unaccepted:
        log.warning(report.line())
    return report
