"""main.ar_aging_snapshot in Iceberg (iceberg/aging.py): from the published history, a day replaced as a
whole, the same numbers as the DuckDB backend's query over the same history."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

from .iceberg_support import iceberg_app, published

from invoice_pipeline.iceberg.aging import build_aging_snapshot_iceberg  # noqa: E402
from invoice_pipeline.iceberg.publish import publish  # noqa: E402
from invoice_pipeline.pipeline import run_source  # noqa: E402


def test_aging_snapshot_from_published_history_replaces_its_day(tmp_path: Path) -> None:
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=40) as sim:
        app, _ = iceberg_app(tmp_path, {"agv": sim.source_config()})
        run_source(app, "agv")
        empty = build_aging_snapshot_iceberg(app)  # nothing published yet: nothing aged
        assert empty["rows"] == 0
        assert publish(app).published
        today = build_aging_snapshot_iceberg(app)
        again = build_aging_snapshot_iceberg(app)  # recomputing the day replaces it
        past = build_aging_snapshot_iceberg(app, date(2000, 1, 1))  # before every invoice: nothing open
    rows = published(app, "main", "ar_aging_snapshot").to_pylist()
    day = [r for r in rows if r["snapshot_date"].isoformat() == today["snapshot_date"]]
    assert len(day) == today["rows"] == again["rows"] > 0 and past["rows"] == 0
    history = published(app, "main", "invoice_history").to_pylist()
    open_now = [h for h in history if h["valid_to"] is None and h["balance_due"] != 0 and not h["is_void"]
                and not h["is_deleted"] and h["status_category"] != "draft"]
    assert sum(r["invoice_count"] for r in day) == today["open_invoices"] == len(open_now)
    assert sum(r["balance_due"] for r in day) == sum(h["balance_due"] for h in open_now)
    assert all(isinstance(r["balance_due"], Decimal) for r in day)
