"""main.invoice_history in Iceberg (iceberg/history.py): a version per change, closed and opened in one
commit, nothing added by a re-read; its audit rules keep a broken history from being published."""

from __future__ import annotations

import time
from pathlib import Path

from .iceberg_support import iceberg_app, ingest, published

from invoice_pipeline.iceberg.publish import publish  # noqa: E402
from invoice_pipeline.pipeline import run_source  # noqa: E402


def test_history_records_each_version_once_and_is_published_with_the_invoices(tmp_path: Path) -> None:
    from invoice_pipeline.iceberg.catalog import INGEST, open_catalog
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=20) as sim:
        app, _ = iceberg_app(tmp_path, {"agv": sim.source_config()})
        first = run_source(app, "agv")
        assert first.rows_written["main.invoice_history"] == 20
        history = ingest(app, "main", "invoice_history")
        assert history.num_rows == 20 and history.column("valid_to").null_count == 20
        run_source(app, "agv")  # the same versions again: nothing added
        assert ingest(app, "main", "invoice_history").num_rows == 20

        time.sleep(1.1)
        touched = sim.mutate(updates=3)
        updated = set(touched["updated"])
        run_source(app, "agv")
        rows = ingest(app, "main", "invoice_history").to_pylist()
        assert len(rows) == 20 + len(updated)
        invoices = {r["invoice_id"]: r for r in ingest(app, "main", "invoices").to_pylist()}
        for invoice_id in updated:
            versions = sorted((r for r in rows if r["invoice_id"] == invoice_id), key=lambda r: r["valid_from"])
            assert len(versions) == 2
            old, new = versions
            assert old["valid_to"] == new["valid_from"] and new["valid_to"] is None  # contiguous, one current
            assert new["last_modified_at"] == invoices[invoice_id]["last_modified_at"]
            assert new["balance_due"] == invoices[invoice_id]["balance_due"]  # exact decimals
        result = publish(app)
        assert result.published, result.failures
        assert published(app, "main", "invoice_history").num_rows == 20 + len(updated)

        # a broken history (a second current version) is refused, main's history unmoved
        table = open_catalog(app.warehouse.iceberg).load_table(("main", "invoice_history"))
        current = table.scan(row_filter="valid_to IS NULL", limit=1).use_ref(INGEST).to_arrow()
        table.append(current, branch=INGEST)
        refused = publish(app)
        assert not refused.published and "history_contiguous" in refused.failures
        assert refused.failures["history_contiguous"][0][1] == current.column("invoice_id")[0].as_py()
        assert published(app, "main", "invoice_history").num_rows == 20 + len(updated)
