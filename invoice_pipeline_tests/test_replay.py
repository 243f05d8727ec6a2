"""Replay from raw payloads gives the same warehouse as the incremental runs that built it."""

from __future__ import annotations

from pathlib import Path

from invoice_pipeline.pipeline import run_source
from invoice_pipeline.replay import replay_source
from invoice_pipeline.warehouse import Warehouse, quote

from .conftest import make_app
from .fake_source import FakeSource, fake_config_block, invoice

VOLATILE = {"_loaded_at", "_run_id", "run_id", "detected_at"}


def dump(app, source: str) -> dict[str, list]:
    out = {}
    with Warehouse(app.warehouse).writer() as con:
        tables = [("main", t) for t in ("invoices", "invoice_lines", "invoice_tax_lines", "invoice_installments")]
        tables += [(source, t) for t in Warehouse(app.warehouse).source_tables(con, source).values()]
        tables.append((source, "_quarantine"))
        for schema, table in tables:
            cols = [r[0] for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema=? AND table_name=? ORDER BY ordinal_position",
                [schema, table]).fetchall() if r[0] not in VOLATILE]
            sql = f"SELECT {', '.join(quote(c) for c in cols)} FROM {quote(schema)}.{quote(table)} ORDER BY ALL"
            out[f"{schema}.{table}"] = con.execute(sql).fetchall()
    return out


def test_replay_equals_incremental_build(tmp_path: Path) -> None:
    app = make_app(tmp_path, {"fake": fake_config_block()})
    cfg = app.sources["fake"]
    bad = invoice(5)
    del bad["total"]
    run_source(app, "fake", source=FakeSource("fake", cfg, [invoice(n, extra={"k": n}) for n in range(1, 5)] + [bad]))
    run_source(app, "fake", source=FakeSource("fake", cfg, [invoice(2, updated="2025-05-01T00:00:00Z", lines=1),
                                                           invoice(6, updated="2025-05-01T00:00:00Z")]))
    before = dump(app, "fake")
    assert len(before["main.invoices"]) == 5 and len(before["fake._quarantine"]) == 1
    summary = replay_source(app, "fake", source=FakeSource("fake", cfg, []))
    assert summary.invoices_loaded == 5 and summary.quarantined == 1
    assert dump(app, "fake") == before
    # The replay is a recorded run, so the next history sync has nothing left to examine.
    from invoice_pipeline.history import history_candidates

    with Warehouse(app.warehouse).writer() as con:
        assert con.execute("SELECT status FROM main._pipeline_runs WHERE run_id = ?", [summary.run_id]).fetchall() == [("success",)]
        assert history_candidates(con, "fake") == 0
