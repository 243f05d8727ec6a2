"""Readers and the pipeline at the same time: separate reader processes query the published snapshot in a
loop (one reconnecting to pick up new versions, one holding a single connection throughout) while this
process runs the pipeline and publishes several times against a changing simulator."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

from invoice_pipeline.pipeline import run_source
from invoice_pipeline.publish import publish
from invoice_pipeline.warehouse import Warehouse

from .conftest import make_app

# One read = several queries on one connection; each must agree with the others and with the version
# (snapshot_id) it reports. Σ lines + Σ tax = total is checked from the child tables themselves, so a
# reader that saw invoices of one version and lines of another would fail it.
READER = r"""
import json, sys, time
import duckdb
path, out_path, stop_path, mode = sys.argv[1:5]
QUERIES = {
    "snapshot_id": "SELECT snapshot_id FROM _snapshot",
    "invoices": "SELECT count(*) FROM invoices",
    "lines": "SELECT count(*) FROM invoice_lines",
    "total": "SELECT sum(total_amount)::VARCHAR FROM invoices",
    "mismatched": '''SELECT count(*) FROM invoices i
        LEFT JOIN (SELECT source_name, invoice_id, sum(line_amount) AS s FROM invoice_lines GROUP BY ALL) l USING (source_name, invoice_id)
        LEFT JOIN (SELECT source_name, invoice_id, sum(tax_amount) AS s FROM invoice_tax_lines GROUP BY ALL) t USING (source_name, invoice_id)
        WHERE NOT i.is_truncated AND coalesce(l.s, 0) + coalesce(t.s, 0) <> i.total_amount''',
    "installments_off": '''SELECT count(*) FROM invoices i
        LEFT JOIN (SELECT source_name, invoice_id, sum(original_amount) AS s FROM invoice_installments GROUP BY ALL) n
          USING (source_name, invoice_id) WHERE NOT i.is_truncated AND coalesce(n.s, 0) <> i.total_amount''',
    "aging_vs_open": '''SELECT (SELECT coalesce(sum(balance_due), 0) FROM ar_aging)
                              = (SELECT coalesce(sum(balance_due), 0) FROM ar_open_items)''',
}
def read(con):
    return {name: con.execute(sql).fetchone()[0] for name, sql in QUERIES.items()}
import os
con = duckdb.connect(path, read_only=True) if mode == "hold" else None
with open(out_path, "w") as out:
    while not os.path.exists(stop_path):
        try:
            if mode == "hold":
                row = read(con)
            else:  # a new connection per read: sees each new version as soon as it is swapped in
                c = duckdb.connect(path, read_only=True)
                try:
                    row = read(c)
                finally:
                    c.close()
            row["at"] = time.time()
        except Exception as exc:
            row = {"error": repr(exc), "at": time.time()}
        out.write(json.dumps(row) + "\n")
        out.flush()
        time.sleep(0.05)
if con is not None:
    con.close()
"""


def start_reader(path: Path, out: Path, stop: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", READER, str(path), str(out), str(stop), mode],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_reads(out: Path, minimum: int, snapshot_id: str | None = None, timeout: float = 60.0) -> None:
    """Until the reader logged `minimum` reads (of `snapshot_id`, if given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = out.read_text().splitlines() if out.exists() else []
        if snapshot_id is not None:
            lines = [line for line in lines if snapshot_id in line]
        if len(lines) >= minimum:
            return
        time.sleep(0.05)
    raise AssertionError(f"reader wrote fewer than {minimum} reads {snapshot_id or ''} to {out} in {timeout}s")


def test_readers_see_whole_versions_while_the_pipeline_runs(tmp_path: Path) -> None:
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=80) as sim:
        app = make_app(tmp_path, {"agv": sim.source_config()})
        wh = Warehouse(app.warehouse)
        published = Path(app.warehouse.published_path)
        versions: dict[str, tuple[int, int, str]] = {}  # snapshot_id -> (invoices, lines, Σ total) in the warehouse

        def run_and_publish() -> str:
            run_source(app, "agv", warehouse=wh)
            result = publish(app, wh)
            with wh.writer() as con:
                total = con.execute("SELECT sum(total_amount)::VARCHAR FROM main.invoices").fetchone()[0]
            rows = result["snapshot_rows"]
            versions[result["snapshot_id"]] = (rows["invoices"], rows["invoice_lines"], total)
            return result["snapshot_id"]

        run_and_publish()
        stop = tmp_path / "stop"
        outs = {mode: tmp_path / f"reads-{mode}.jsonl" for mode in ("cycle", "hold")}
        readers = {mode: start_reader(published, out, stop, mode) for mode, out in outs.items()}
        try:
            for out in outs.values():
                wait_for_reads(out, 3)
            for n in range(3):  # each run changes lines and amounts, adds invoices, voids some
                sim.mutate(updates=6, new=5, voids=2, delete_lines=3, seed=10 + n)
                version = run_and_publish()
                held = len(outs["hold"].read_text().splitlines())
                wait_for_reads(outs["cycle"], 2, snapshot_id=version)  # the new version shows on reconnect
                wait_for_reads(outs["hold"], held + 2)  # the held connection keeps answering
        finally:
            stop.touch()
            errors = {mode: p.communicate(timeout=30)[1] for mode, p in readers.items()}
        assert all(p.returncode == 0 for p in readers.values()), errors

    reads = {mode: [json.loads(line) for line in out.read_text().splitlines()] for mode, out in outs.items()}
    assert [r for rs in reads.values() for r in rs if "error" in r] == []
    ordered = sorted(versions)  # snapshot ids sort by publish time
    assert len(ordered) == 4
    assert [versions[v][0] for v in ordered] == sorted({versions[v][0] for v in ordered}), "each run adds invoices"
    for mode, rs in reads.items():
        for r in rs:
            assert r["snapshot_id"] in versions, r
            assert (r["invoices"], r["lines"], r["total"]) == versions[r["snapshot_id"]], (mode, r)
            assert r["mismatched"] == 0 and r["installments_off"] == 0 and r["aging_vs_open"], (mode, r)
            assert Decimal(r["total"]) > 0
    seen = [r["snapshot_id"] for r in reads["cycle"]]
    assert seen == sorted(seen), "a reconnecting reader never goes back to an older version"
    assert set(seen) == set(ordered), "the reconnecting reader saw every published version"
    # The reader that never reconnected kept its first version throughout, and its open connection
    # never stopped the pipeline from publishing three newer ones.
    assert {r["snapshot_id"] for r in reads["hold"]} == {ordered[0]}
