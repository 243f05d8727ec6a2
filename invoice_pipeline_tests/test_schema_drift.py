"""Schema drift against a tampered Oracle simulator: a new field, a field no longer sent and a field
of another JSON type are reported in the source's metadata, a warning check and one log line; under
`schema_contract: freeze` the new field fails the blocking check and nothing is published."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from invoice_pipeline.config import parse_config
from invoice_pipeline.errors import ConfigError
from invoice_pipeline.drift import observe
from invoice_pipeline.runner import run_pipeline
from invoice_pipeline.sources.oracle_occ.simulator import SIMULATOR_CLASS

from .conftest import write_app_config

SIZE = 60  # at least drift.MIN_FOR_VANISHED payloads, so a field no longer sent is reported


class _DriftingSim(SIMULATOR_CLASS):
    """stage 0: every detail has Channel "web"; stage 1: Channel is a number, LoyaltyTier is new and
    BusinessUnit is no longer sent."""

    stage = 0

    def _detail(self, inv: Any) -> dict[str, Any]:
        body = super()._detail(inv)
        if self.stage == 0:
            return {**body, "Channel": "web"}
        body = {k: v for k, v in body.items() if k != "BusinessUnit"}
        return {**body, "Channel": 5, "LoyaltyTier": {"level": "gold"}}


def _drift(key: str) -> tuple[dict, dg.AssetCheckEvaluation]:
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey([key, "invoices"]))
        meta = {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()} if event else {}
        check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey([key, "invoices"]), "schema_drift")])
        evaluation = next(iter(check.values())).event.dagster_event.event_specific_data
    return meta, evaluation


def _backfill_all() -> tuple[str, str]:
    return ("2020-01-01T00:00:00Z", datetime.now(UTC).isoformat())


@pytest.mark.parametrize("contract", ["evolve", "freeze"])
def test_drift_is_reported_and_freeze_blocks_new_fields(in_tmp: Path, contract: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    with _DriftingSim(size=SIZE) as sim:
        app, path = write_app_config(in_tmp, {"ora": {**sim.source_config(), "schema_contract": contract}})
        first = run_pipeline(app, str(path))
        assert first.success, first.failures
        meta, check = _drift("ora")
        assert meta["baseline"] is True and check.passed  # the first run only records

        sim.stage = 1
        with caplog.at_level(logging.WARNING, logger="invoice_pipeline.drift"):
            second = run_pipeline(app, str(path), backfill=_backfill_all())  # re-reads every invoice
    meta, check = _drift("ora")
    assert meta["fields_new"] == ["invoices.LoyaltyTier__level"]
    assert meta["fields_vanished"] == ["invoices.BusinessUnit"]
    assert meta["fields_type_changed"] == ["invoices.Channel: string -> number"]
    assert meta["payloads_compared"] == SIZE
    assert not check.passed and "schema drift" in check.description
    lines = [r.getMessage() for r in caplog.records if r.name == "invoice_pipeline.drift"]
    assert len(lines) == 1 and "1 new: invoices.LoyaltyTier__level" in lines[0]
    if contract == "evolve":
        assert check.severity == dg.AssetCheckSeverity.WARN and not check.blocking
        assert second.success and second.published, second.failures
    else:
        assert check.severity == dg.AssetCheckSeverity.ERROR and check.blocking
        assert meta["fields_not_accepted"] == ["invoices.LoyaltyTier__level"]
        assert not second.success and "schema_drift" in second.blocking_failed and not second.published


def test_paths_follow_the_flattening_notation() -> None:
    seen: dict = {}
    from collections import defaultdict

    seen = defaultdict(set)
    observe({"a": {"b": 1}, "tags": ["x"], "lines": [{"amount": "1.0", "tax": [{"r": None}]}], "e": {}}, seen)
    assert dict(seen) == {("invoices", ".a__b"): {"number"}, ("invoices", ".tags"): {"array"},
                          ("invoices__lines", ".amount"): {"string"},
                          ("invoices__lines__tax", ".r"): {"null"}, ("invoices", ".e"): {"object"}}


def test_schema_contract_is_checked() -> None:
    from .fake_source import fake_config_block

    with pytest.raises(ConfigError, match="sources.a.schema_contract"):
        parse_config({"sources": {"a": {**fake_config_block(), "schema_contract": "strict"}}})
