"""Deletion reconciliation with `warehouse.backend: iceberg` (lifecycle/deletions.py, iceberg/deletions.py,
docs/ICEBERG.md): invoices gone from the simulator are marked (never erased) on `ingest` with a deleted
version in the history, the audit accepts it and publish shows it; the share guard refuses a listing
that misses most invoices with the DuckDB backend's message; an invoice found again is un-deleted; and
`invoice-pipeline reconcile` runs it through the Iceberg Dagster graph."""

from __future__ import annotations

from pathlib import Path

import pytest

from .iceberg_support import duplicates, iceberg_app, ingest, published

from invoice_pipeline import lifecycle  # noqa: E402
from invoice_pipeline.errors import PipelineError  # noqa: E402
from invoice_pipeline.iceberg.publish import publish  # noqa: E402
from invoice_pipeline.pipeline import build_source, run_source  # noqa: E402


def _state(app, source: str) -> dict[str, dict]:
    return {r["invoice_id"]: r for r in ingest(app, "main", "invoices").to_pylist() if r["source_name"] == source}


def _versions(app, source: str, invoice_id: str) -> list[dict]:
    rows = [r for r in ingest(app, "main", "invoice_history").to_pylist()
            if r["source_name"] == source and r["invoice_id"] == invoice_id]
    return sorted(rows, key=lambda r: r["valid_from"])


def _narrowed(app, source: str, hidden: set[str]):
    """The real client, but neither its listing nor its reads by id return `hidden` (as narrowed credentials)."""
    src = build_source(app, source)
    list_ids, fetch_by_ids = src.list_ids, src.fetch_by_ids
    src.list_ids = lambda since: set(list_ids(since)) - hidden
    src.fetch_by_ids = lambda ids, **kw: ([r for r in batch if r.invoice_id not in hidden]
                                          for batch in fetch_by_ids(ids, **kw))
    return src


def test_deleted_invoices_are_marked_with_a_deletion_version_and_published(tmp_path: Path) -> None:
    from invoice_pipeline.sources.softwareone.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=30) as sim:
        app, _ = iceberg_app(tmp_path, {"swo": sim.source_config()})
        run_source(app, "swo")
        deleted = sorted(sim.mutate(deletes=3, seed=4)["deleted"])
        result = lifecycle.reconcile_deletions(app, "swo")
        assert result.deleted == deleted and result.checked == 30 and result.reappeared == []
        state = _state(app, "swo")
        assert len(state) == 30  # marked, never erased
        assert sorted(i for i, r in state.items() if r["is_deleted"]) == deleted
        assert all(state[i]["deleted_detected_at"] is not None for i in deleted)
        for invoice_id in deleted:
            versions = _versions(app, "swo", invoice_id)
            assert [v["is_deleted"] for v in versions] == [False, True]
            assert versions[1]["valid_from"] == state[invoice_id]["deleted_detected_at"]
            assert versions[0]["valid_to"] == versions[1]["valid_from"] and versions[1]["valid_to"] is None
        history_rows = ingest(app, "main", "invoice_history").num_rows
        assert duplicates(ingest(app, "main", "invoices"), ["source_name", "invoice_id"]) == 0

        again = lifecycle.reconcile_deletions(app, "swo")  # nothing new: no mark, no version
        assert again.deleted == [] and again.missing == 0
        assert ingest(app, "main", "invoice_history").num_rows == history_rows

        outcome = publish(app)  # the audit (history_matches_invoices, ...) accepts the marks
        assert outcome.published, outcome.failures
        main = {r["invoice_id"]: r["is_deleted"] for r in published(app, "main", "invoices").to_pylist()}
        assert sorted(i for i, d in main.items() if d) == deleted


def test_guard_refuses_a_mass_deletion_and_a_reappeared_invoice_is_unmarked(tmp_path: Path) -> None:
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=30) as sim:
        app, _ = iceberg_app(tmp_path, {"agv": sim.source_config()})
        run_source(app, "agv")
        ids = sorted(_state(app, "agv"))

        # A listing that misses 20 of 30: refused with the DuckDB backend's message, nothing marked.
        with pytest.raises(PipelineError, match=r"source 'agv': 20 of 30 invoices would be marked deleted, more than "
                                                r"reconcile_max_deleted_share=.*--allow-mass-deletion"):
            lifecycle.reconcile_deletions(app, "agv", source=_narrowed(app, "agv", set(ids[:20])))
        assert not any(r["is_deleted"] for r in _state(app, "agv").values())

        # Three invoices vanish (few: below the guard), then come back unchanged.
        hidden = set(ids[:3])
        gone = lifecycle.reconcile_deletions(app, "agv", source=_narrowed(app, "agv", hidden))
        assert gone.deleted == sorted(hidden)
        assert sorted(i for i, r in _state(app, "agv").items() if r["is_deleted"]) == sorted(hidden)

        back = lifecycle.reconcile_deletions(app, "agv")
        assert back.reappeared == sorted(hidden) and back.deleted == []
        assert back.summary is not None and back.summary.status == "success"
        state = _state(app, "agv")
        assert not any(r["is_deleted"] for r in state.values())
        assert all(state[i]["deleted_detected_at"] is None for i in hidden)
        for invoice_id in hidden:
            assert [v["is_deleted"] for v in _versions(app, "agv", invoice_id)] == [False, True, False]
        assert duplicates(ingest(app, "main", "invoices"), ["source_name", "invoice_id"]) == 0
        runs = [r["mode"] for r in ingest(app, "main", "_pipeline_runs").to_pylist() if r["run_id"] == back.summary.run_id]
        assert runs == ["reconcile"]
        outcome = publish(app)
        assert outcome.published, outcome.failures


def test_cli_reconcile_marks_deletions_through_the_iceberg_graph(tmp_path: Path) -> None:
    from .conftest import cli_in
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=15) as sim:
        app, config = iceberg_app(tmp_path, {"agv": sim.source_config()})
        (tmp_path / "c.yaml").write_text(config.read_text())
        done = cli_in(tmp_path, "run")
        assert done.returncode == 0, done.stdout + done.stderr
        deleted = sorted(sim.mutate(deletes=2, seed=3)["deleted"])
        now = cli_in(tmp_path, "reconcile", "--source", "agv")
    assert now.returncode == 0, now.stdout[-2000:] + now.stderr[-2000:]
    assert "marked deleted 2" in now.stdout, now.stdout
    main = {r["invoice_id"]: r["is_deleted"] for r in published(app, "main", "invoices").to_pylist()}
    assert sorted(i for i, d in main.items() if d) == deleted  # published by the same CLI run


def test_a_load_committed_during_the_marking_wins_the_conflict_and_is_not_marked(tmp_path: Path, monkeypatch) -> None:
    """The marks' commit conflicts with a load of one of the invoices (another writer): it is re-read and
    retried, and the reloaded invoice (it exists after all) stays unmarked; the others are marked."""
    import time

    from invoice_pipeline.iceberg import deletions as ice_deletions
    from invoice_pipeline.pipeline import load_records
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=20) as sim:
        app, _ = iceberg_app(tmp_path, {"agv": sim.source_config()})
        run_source(app, "agv")
        ids = sorted(_state(app, "agv"))
        hidden = set(ids[:3])
        real_scan, scans = ice_deletions._scan_ref, []

        def scan_then_concurrent_load(table, row_filter, columns):
            rows = real_scan(table, row_filter, columns)
            scans.append(table.name())
            if len(scans) == 2:  # the marks' first read (the first is stored_ids'): another writer commits now
                time.sleep(1.0)  # its _loaded_at (whole seconds) after the listing began
                load_records(app, "agv", lambda src: src.fetch_by_ids({ids[0]}), mode="backfill")
            return rows

        monkeypatch.setattr(ice_deletions, "_scan_ref", scan_then_concurrent_load)
        lifecycle.reconcile_deletions(app, "agv", source=_narrowed(app, "agv", hidden))
        assert len(scans) == 3  # the conflict made the marks re-read once
        state = _state(app, "agv")
        assert sorted(i for i, r in state.items() if r["is_deleted"]) == ids[1:3]
        assert [v["is_deleted"] for v in _versions(app, "agv", ids[0])] == [False]
        assert duplicates(ingest(app, "main", "invoices"), ["source_name", "invoice_id"]) == 0
        outcome = publish(app)
        assert outcome.published, outcome.failures


def test_cli_run_with_always_reconciles_and_the_guard_refuses_with_main_unmoved(tmp_path: Path) -> None:
    """reconcile_schedule: always puts the reconciliation in every `invoice-pipeline run` (Iceberg graph
    too); a mass deletion fails the run with the guard's message and marks nothing."""
    from .conftest import cli_in
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=30) as sim:
        app, config = iceberg_app(tmp_path, {"agv": {**sim.source_config(), "reconcile_schedule": "always",
                                                     "reconcile_max_deleted_share": 0.1}})
        (tmp_path / "c.yaml").write_text(config.read_text())
        first = cli_in(tmp_path, "run")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "deletion reconciliation due for agv" in first.stderr
        sim.mutate(deletes=15, seed=5)  # more than 10% and more than the guard's minimum of 10
        refused = cli_in(tmp_path, "run")
    assert refused.returncode == 1
    assert "would be marked deleted" in refused.stdout and "--allow-mass-deletion" in refused.stdout, refused.stdout
    assert not any(r["is_deleted"] for r in ingest(app, "main", "invoices").to_pylist())
    assert not any(r["is_deleted"] for r in published(app, "main", "invoices").to_pylist())
