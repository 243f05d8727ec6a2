"""Reliability under API faults, all four sources against their simulators.

5xx, 429 with Retry-After, short token/session lifetimes, latency, dropped connections and bodies
cut off mid-JSON: the run must still end with exactly the simulator's truth (counts and Decimal
sums in main.*). Past max_retries the run fails with a SourceError naming source, endpoint and
cause, moves no cursor, and a re-run completes exactly.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from invoice_pipeline.config import AppConfig, parse_config
from invoice_pipeline.errors import SourceError
from invoice_pipeline.http import HttpClient
from invoice_pipeline.pipeline import run_source
from invoice_pipeline.simulation import Knobs
from invoice_pipeline.sources import simulator_class, source_class
from invoice_pipeline.sources.base import Source
from invoice_pipeline.warehouse import Warehouse

SOURCE_TYPES = ("oracle_occ", "crmcom", "softwareone", "agvance")
# Per type: simulator size, extra config keys (small pages / windows so a run makes many calls).
SETUP: dict[str, tuple[int, dict[str, Any]]] = {
    "oracle_occ": (80, {"concurrency": 4}),
    "crmcom": (120, {"page_size": 10, "concurrency": 4}),
    "softwareone": (120, {"page_size": 8}),
    "agvance": (120, {"window_size": "20d", "concurrency": 4}),
}
# Token lifetimes short enough to expire several times in one run. Agvance sessions expire after
# idle time (each call extends them), so there the server also drops every session now and then.
LIFETIME = {"oracle_occ": 0.3, "crmcom": 0.25, "softwareone": 0.3, "agvance": 0.3}  # long enough for one call under load


def drop_sessions_every(sim: Any, calls: int) -> None:
    """Agvance: the server forgets every session once per `calls` requests (an app-pool recycle)."""
    if not hasattr(sim, "sessions"):
        return
    handle, seen = sim.handle, [0]

    def recycling_handle(request: Any) -> Any:
        with sim._lock:
            seen[0] += 1
            if seen[0] % calls == 0:
                sim.sessions.clear()
        return handle(request)

    sim.handle = recycling_handle


def make_app_for(tmp_path: Path, name: str, block: dict[str, Any]) -> AppConfig:
    return parse_config({
        "warehouse": {"duckdb_path": str(tmp_path / "w.duckdb"), "published_path": str(tmp_path / "p.duckdb"),
                      "parquet_dir": str(tmp_path / "parquet")},
        "sources": {name: block},
    })


def fast_source(app: AppConfig, name: str, max_retries: int = 12) -> Source:
    """The configured source with a fast backoff (the production default starts at 0.5 s)."""
    cfg = app.sources[name]
    http = HttpClient(name, cfg.base_url, timeout=5.0, max_retries=max_retries, backoff_initial=0.01,
                      backoff_max=0.05, pool_size=cfg.concurrency, secrets=cfg.secrets())
    return source_class(cfg.type)(name, cfg, http)


def warehouse_totals(con, source: str) -> dict[str, Any]:
    """Everything any simulator's expected() reports, computed from the conformed model."""
    inv = con.execute(
        """select count(*), coalesce(sum(total_amount), 0), coalesce(sum(net_amount), 0), coalesce(sum(tax_amount), 0),
                  coalesce(sum(balance_due), 0), count(*) filter (where is_truncated), count(*) filter (where is_void)
           from main.invoices where source_name = ?""", [source]).fetchone()
    counts = {t: con.execute(f"select count(*) from main.{t} where source_name = ?", [source]).fetchone()[0]
              for t in ("invoice_lines", "invoice_tax_lines", "invoice_installments")}
    return {"invoices": inv[0], "total_amount": inv[1], "line_amount": inv[2], "tax_amount": inv[3],
            "balance_due": inv[4], "truncated": inv[5], "void": inv[6], "lines": counts["invoice_lines"],
            "tax_lines": counts["invoice_tax_lines"], "installments": counts["invoice_installments"]}


def renewals(sim: Any) -> int:
    """Credentials the simulator had to renew or refuse beyond the first login."""
    if hasattr(sim, "unauthorized"):  # SoftwareOne: a static token, refused once per lifetime period
        return sim.unauthorized
    if hasattr(sim, "logins"):  # CRM.COM tokens, Agvance sessions
        return sim.logins - 1
    return sim.requests["/ccstore/v1/login"] + sim.requests["/ccstore/v1/refresh"] - 1  # Oracle OCC


def assert_exact(app: AppConfig, name: str, sim: Any) -> None:
    expected = sim.expected()
    with Warehouse(app.warehouse).reader() as con:
        got = warehouse_totals(con, name)
    assert {k: got[k] for k in expected} == expected
    for key, value in expected.items():
        if key.endswith("amount") or key == "balance_due":
            assert isinstance(got[key], Decimal), (key, type(got[key]))  # never a float on the way
    assert expected["invoices"] > 0


@pytest.mark.parametrize("source_type", SOURCE_TYPES)
def test_faults_exact_data_or_a_clear_failure_then_an_exact_rerun(tmp_path: Path, source_type: str) -> None:
    size, extra = SETUP[source_type]
    faults = Knobs(latency=0.02, error_rate=0.10, rate_limit_rate=0.05, retry_after=0, drop_rate=0.02,
                   truncate_rate=0.03, token_lifetime=LIFETIME[source_type], seed=11)
    with simulator_class(source_type)(size=size, knobs=faults) as sim:
        app = make_app_for(tmp_path, "src", {**sim.source_config(), **extra})
        wh = Warehouse(app.warehouse)

        # 1. The API is down (every answer a 5xx): past max_retries the run fails, naming it all.
        sim.knobs.error_rate = 1.0
        with pytest.raises(SourceError) as err:
            run_source(app, "src", source=fast_source(app, "src", max_retries=2))
        message = str(err.value)
        assert err.value.source == "src" and message.startswith("source 'src' ")
        assert err.value.endpoint and err.value.endpoint.split()[0] in ("GET", "POST")
        assert err.value.endpoint in message and "gave up after 3 attempts" in message
        assert err.value.status in (500, 502, 503, 504) and f"HTTP {err.value.status}" in message
        assert not any(secret in message for secret in app.sources["src"].secrets())
        with wh.reader() as con:
            assert wh.cursor(con, "src") is None  # a failed run never moves the cursor
            status, error = con.execute("select status, error from main._pipeline_runs where source_name = 'src'").fetchone()
        assert status == "failed" and "gave up" in error

        # 2. The re-run, under 10% 5xx, 5% 429, drops, cut-off bodies and expiring credentials, is exact.
        sim.knobs.error_rate = 0.10
        drop_sessions_every(sim, 15)
        first = run_source(app, "src", source=fast_source(app, "src"))
        assert first.status == "success" and first.quarantined == 0
        assert first.retries >= 1  # the faults really happened and were absorbed
        assert renewals(sim) >= 1  # and credentials expired mid-run and were renewed
        assert_exact(app, "src", sim)

        # 3. So is the incremental run after changes at the source, under the same faults.
        sim.mutate(updates=5, new=3, voids=2, delete_lines=2)
        second = run_source(app, "src", source=fast_source(app, "src"))
        assert second.status == "success" and second.invoices_loaded >= 10
        assert_exact(app, "src", sim)
