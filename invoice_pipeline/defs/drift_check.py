"""The `schema_drift` check of each source asset (invoice_pipeline/drift.py): a warning, blocking
under `schema_contract: freeze`, with the drift in its metadata."""

from __future__ import annotations

import dagster as dg

from invoice_pipeline.config import SourceConfig
from invoice_pipeline.defs.keys import SCHEMA_DRIFT_CHECK, source_asset_key
from invoice_pipeline.drift import DriftReport, Path, registry_paths
from invoice_pipeline.warehouse import Warehouse


def drift_check_spec(name: str, config: SourceConfig) -> dg.AssetCheckSpec:
    frozen = config.schema_contract == "freeze"
    return dg.AssetCheckSpec(
        SCHEMA_DRIFT_CHECK, asset=source_asset_key(name), blocking=frozen,
        description="The payload's fields are those recorded before: none new, none gone, none of another JSON "
                    "type" + (" (schema_contract: freeze: new fields block the conformed refresh and publish)"
                              if frozen else " (a warning: the flattened tables absorb every change)"))


def registry_before(wh: Warehouse, name: str) -> set[Path]:
    with wh.reader() as con:
        return registry_paths(con, name)


def drift_metadata(drift: DriftReport) -> dict:
    return {k: dg.MetadataValue.json(v) if isinstance(v, list) else v for k, v in drift.metadata().items()}


def drift_check_result(name: str, drift: DriftReport) -> dg.AssetCheckResult:
    frozen = drift.contract == "freeze"
    return dg.AssetCheckResult(
        check_name=SCHEMA_DRIFT_CHECK, asset_key=source_asset_key(name), passed=drift.passed,
        severity=dg.AssetCheckSeverity.ERROR if frozen and drift.unaccepted else dg.AssetCheckSeverity.WARN,
        metadata=drift_metadata(drift),
        description=None if drift.passed else drift.line())
