"""The conformed model over all four sources: exact sums, incremental == full rebuild, checks on injected faults."""

from __future__ import annotations

from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path

import dagster as dg

from invoice_pipeline.conformed import CONFORMED_TABLES
from invoice_pipeline.pipeline import run_source
from invoice_pipeline.dropping import drop_source
from invoice_pipeline.publish import refresh_conformed
from invoice_pipeline.audit import RULES, violations, violations_by_rule
from invoice_pipeline.replay import replay_source
from invoice_pipeline.simulation import Knobs
from invoice_pipeline.simulate import start_simulators
from invoice_pipeline.warehouse import Warehouse, quote

from .conftest import make_app, write_app_config

RULE = {r.name: r for r in RULES}


def conformed_totals(con, source: str) -> dict:
    inv = con.execute(
        "SELECT count(*), sum(total_amount), sum(net_amount), sum(tax_amount) FROM main.invoices WHERE source_name = ?",
        [source]).fetchone()
    lines = con.execute("SELECT count(*), sum(line_amount) FROM main.invoice_lines WHERE source_name = ?", [source]).fetchone()
    taxes = con.execute("SELECT count(*), sum(tax_amount) FROM main.invoice_tax_lines WHERE source_name = ?", [source]).fetchone()
    return {"invoices": inv[0], "total_amount": inv[1], "net": inv[2], "tax": inv[3],
            "lines": lines[0], "line_amount": lines[1], "tax_lines": taxes[0], "tax_amount": taxes[1]}


def dump_conformed(con) -> dict[str, list]:
    out = {}
    for table, columns in CONFORMED_TABLES.items():
        cols = ", ".join(quote(c) for c in columns if c not in ("_loaded_at", "_run_id"))
        out[table] = con.execute(f"SELECT {cols} FROM main.{table} ORDER BY ALL").fetchall()
    return out


def test_all_four_sources_exact_incremental_equals_rebuild_and_removal(tmp_path: Path) -> None:
    with ExitStack() as stack:
        sims = start_simulators(stack, size=60)
        assert len(sims) == 4
        app = make_app(tmp_path, {n: s.source_config() for n, s in sims.items()})
        wh = Warehouse(app.warehouse)
        for name in sims:
            run_source(app, name)
        with wh.writer() as con:
            for name, sim in sims.items():
                want, got = sim.expected(), conformed_totals(con, name)
                assert got["invoices"] == want["invoices"], name
                assert (got["lines"], got["tax_lines"]) == (want["lines"], want["tax_lines"]), name
                assert got["total_amount"] == want["total_amount"], name
                assert got["line_amount"] == got["net"] == want["line_amount"], name
                assert got["tax_amount"] == got["tax"] == want["tax_amount"], name
                assert isinstance(got["total_amount"], Decimal)
            for rule in RULES:
                if rule.blocking:
                    assert violations(con, rule) == [], rule.name

        for sim in sims.values():
            sim.mutate(updates=4, new=2, voids=2, delete_lines=2, seed=5)
        for name in sims:
            run_source(app, name)
        with wh.writer() as con:
            for name, sim in sims.items():
                assert conformed_totals(con, name)["total_amount"] == sim.expected()["total_amount"], name
            incremental = dump_conformed(con)
        for name in sims:  # full rebuild of every source from its raw payloads
            replay_source(app, name)
        with wh.writer() as con:
            assert dump_conformed(con) == incremental

        remaining = [n for n in sims if n != "swo"]
        refresh_conformed(wh, remaining)  # a run of a config without swo keeps swo's rows (nothing lost)
        with wh.writer() as con:
            assert dump_conformed(con) == incremental
        drop_source(app, "swo", apply=True)  # only the explicit command removes a source
        with wh.writer() as con:
            assert con.execute("SELECT count(*) FROM main.invoices WHERE source_name = 'swo'").fetchone()[0] == 0
            assert con.execute("SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'swo'").fetchone()[0] == 0
            assert {r[0] for r in con.execute("SELECT DISTINCT source_name FROM main.invoices").fetchall()} == set(remaining)


def test_checks_fail_exactly_on_injected_faults(tmp_path: Path) -> None:
    with ExitStack() as stack:
        sims = start_simulators(stack, size=80, knobs=Knobs(inconsistent_rate=0.08))
        app = make_app(tmp_path, {n: s.source_config() for n, s in sims.items()})
        for name in sims:
            run_source(app, name)
        injected = {(name, i) for name, sim in sims.items() for i in sim.inconsistent_ids()}
        with Warehouse(app.warehouse).writer() as con:
            truncated = {tuple(r) for r in con.execute("SELECT source_name, invoice_id FROM main.invoices WHERE is_truncated").fetchall()}
            failing = {(s, i) for s, i, _ in violations(con, RULE["lines_plus_tax_equal_total"])}
            assert injected and failing == injected - truncated
            for name in ("unique_invoice_lines", "orphans_invoice_lines", "balance_not_above_total"):
                assert violations(con, RULE[name]) == [], name
            # structural faults: a duplicated line and a line whose invoice is gone
            victim = con.execute("SELECT source_name, invoice_id, line_id FROM main.invoice_lines ORDER BY ALL LIMIT 1").fetchone()
            con.execute("INSERT INTO main.invoice_lines SELECT * FROM main.invoice_lines WHERE source_name = ? AND invoice_id = ? AND line_id = ?", list(victim))
            orphan = con.execute("SELECT source_name, invoice_id FROM main.invoices WHERE source_name = 'agvance_main' ORDER BY invoice_id LIMIT 1").fetchone()
            con.execute("DELETE FROM main.invoices WHERE source_name = ? AND invoice_id = ?", list(orphan))
            assert {(s, i) for s, i, _ in violations(con, RULE["unique_invoice_lines"])} == {victim[:2]}
            assert {(s, i) for s, i, _ in violations(con, RULE["orphans_invoice_lines"])} == {tuple(orphan)}
            exceptions = con.execute("SELECT DISTINCT rule FROM main.reconciliation_exceptions").fetchall()
            assert {"unique_invoice_lines", "orphans_invoice_lines", "lines_plus_tax_equal_total"} <= {r[0] for r in exceptions}
            # the checks' one-query summary says what each rule's own query says
            summary = violations_by_rule(con, [r.name for r in RULES], limit=3)
            for rule in RULES:
                found = violations(con, rule)
                assert summary[rule.name] == (len(found), found[:3]), rule.name
            assert summary["lines_plus_tax_equal_total"][0] == len(failing) > 3


def test_failing_blocking_check_stops_publish(in_tmp: Path) -> None:
    from invoice_pipeline.defs import build_definitions
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=60, knobs=Knobs(inconsistent_rate=0.1)) as sim:
        assert sim.inconsistent_ids()
        app, cfg = write_app_config(in_tmp, {"agv": sim.source_config()})
        job = build_definitions(app, str(cfg)).resolve_job_def("invoice_pipeline_job")
        result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
        checks = {e.event_specific_data.check_name: e.event_specific_data for e in result.all_events
                  if e.event_type_value == "ASSET_CHECK_EVALUATION"}
        failed = checks["lines_plus_tax_equal_total"]
        assert not failed.passed
        named = {o["invoice_id"] for o in failed.metadata["first_offenders"].value}
        assert named and named <= sim.inconsistent_ids()
        assert not Path(app.warehouse.published_path).exists()
        assert not any(e.is_step_materialization and e.asset_key == dg.AssetKey(["published", "warehouse"])
                       for e in result.all_events)
