"""`invoice-pipeline demo` end to end, as a user runs it: a subprocess in an empty directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from invoice_pipeline.demo import CHANGE_KINDS, MUTATIONS, InvoiceState, classify_changes

SIZE = 40
LINE = re.compile(r"^  (\S+)\s+" + r",\s+".join(rf"{k} (\d+)" for k in CHANGE_KINDS) + r"(.*)$")
# mutate() keyword -> the kind it reports
ASKED = {"updated": MUTATIONS["updates"], "new": MUTATIONS["new"], "voided": MUTATIONS["voids"],
         "lines_deleted": MUTATIONS["delete_lines"]}


def _section(out: str, title: str) -> list[str]:
    """The lines of one '== title' section of the demo's output."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"== {title}"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("==")), len(lines))
    return lines[start + 1:end]


def _changes(lines: list[str]) -> dict[str, tuple[dict[str, int], str]]:
    found = {}
    for line in lines:
        if m := LINE.match(line):
            found[m.group(1)] = (dict(zip(CHANGE_KINDS, map(int, m.groups()[1:5]), strict=True)), m.group(6))
    return found


def _printed_queries(out: str) -> list[str]:
    """The SQL printed after the '-- title' lines at the end of the demo's output."""
    queries: list[list[str]] = []
    for line in out[out.index("Try ("):].splitlines()[1:]:
        if line.startswith("  -- "):
            queries.append([])
        elif queries:
            queries[-1].append(line.strip())
    return ["\n".join(q) for q in queries]


def test_demo_prints_what_the_incremental_run_changed(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "INVOICE_PIPELINE_CONFIG")}
    proc = subprocess.run([sys.executable, "-m", "invoice_pipeline.cli", "demo", "--size", str(SIZE)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout

    at_source = _changes(_section(out, "changing the sources"))
    in_warehouse = _changes(_section(out, "run 2: incremental"))
    sources = ["oracle_us", "crm_eu", "swo", "agvance_main"]
    assert sorted(at_source) == sorted(in_warehouse) == sorted(sources), out
    for source in sources:
        assert at_source[source][0] == ASKED, (source, at_source[source])  # what mutate() reported
        counts, note = in_warehouse[source]
        assert counts == ASKED, (source, counts, out)  # what the warehouse shows after run 2
        assert "same invoices as the simulator changed" in note, (source, note)

    # Per table, the second run's net change: 3 new invoices in every source's root and conformed table.
    for source in sources:
        for table in (f"{source}.invoices", "main.invoices"):
            row = next(line for line in _section(out, "run 2: incremental")
                       if re.match(rf"^  {source}\s+{re.escape(table)}\s", line))
            rows, change = row.split()[2:4]
            assert (int(rows), change) == (SIZE + MUTATIONS["new"], f"+{MUTATIONS['new']}"), row

    # The files the demo says it wrote are where it says, the published snapshot readable by anyone.
    # The demo's own data set lives apart from the one `simulate` + `dagster dev` use (data/warehouse.duckdb).
    assert "data/demo/published/warehouse.duckdb" in out and (tmp_path / "data/demo/dagster_home/dagster.yaml").is_file()
    assert not (tmp_path / "data/warehouse.duckdb").exists()
    with duckdb.connect(str(tmp_path / "data/demo/published/warehouse.duckdb"), read_only=True) as con:
        per_source = dict(con.execute("SELECT source_name, count(*) FILTER (WHERE is_void) FROM invoices GROUP BY 1").fetchall())
        assert sorted(per_source) == sorted(sources)
        queries = _printed_queries(out)
        assert len(queries) == 3, out[-1500:]
        for query in queries:
            assert con.execute(query).fetchall(), query  # the example queries run as printed, with results
    assert list((tmp_path / "data/demo/parquet").iterdir())


def test_classify_changes_tells_each_kind_apart() -> None:
    t0, t1 = datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC)
    before = {("s", "a"): InvoiceState(t0, False, frozenset({"1", "2"})),
              ("s", "b"): InvoiceState(t0, False, frozenset({"1", "2"})),
              ("s", "c"): InvoiceState(t0, False, frozenset({"1"})),
              ("s", "d"): InvoiceState(t0, False, frozenset({"1"}))}
    after = {("s", "a"): InvoiceState(t1, False, frozenset({"1"})),  # a line gone
             ("s", "b"): InvoiceState(t1, True, frozenset({"1", "2"})),  # voided
             ("s", "c"): InvoiceState(t1, False, frozenset({"1"})),  # changed otherwise
             ("s", "d"): InvoiceState(t0, False, frozenset({"1"})),  # re-read, unchanged
             ("s", "e"): InvoiceState(t1, False, frozenset({"1"}))}
    assert classify_changes(before, after) == {"s": {"updated": ["c"], "new": ["e"], "voided": ["b"], "lines_deleted": ["a"]}}
