"""The Dagster definitions load (with and without a config file) and materialize end to end."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import yaml

from invoice_pipeline.defs import build_definitions
from invoice_pipeline.warehouse import Warehouse

from .conftest import make_app


def test_definitions_module_loads_without_config(in_tmp: Path) -> None:
    import importlib

    import invoice_pipeline.definitions as module

    defs = importlib.reload(module).defs
    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert {"main/invoices", "main/invoice_lines", "published/warehouse"} <= keys
    assert any(k.endswith("/invoices") and not k.startswith("main") for k in keys)


def test_materialize_assets_against_simulator(in_tmp: Path) -> None:
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=40) as sim:
        app = make_app(in_tmp, {"agv": sim.source_config()})
        config_file = in_tmp / "cfg.yaml"
        config_file.write_text(yaml.safe_dump({"warehouse": {k: str(v) for k, v in app.warehouse.model_dump().items()},
                                               "sources": {"agv": sim.source_config()}}))
        defs = build_definitions(app, str(config_file))
        dg.Definitions.validate_loadable(defs)
        job = defs.resolve_implicit_global_asset_job_def()
        result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral())
        assert result.success
        mats = {e.asset_key.to_user_string(): e for e in result.asset_materializations_for_node("agv__invoices")}
        meta = mats["agv/invoices"].metadata
        assert meta["invoices_loaded"].value == 40 and meta["api_calls"].value > 1
        checks = [e for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        assert checks and all(e.event_specific_data.passed for e in checks)
        assert Path(app.warehouse.published_path).exists()
        with Warehouse(app.warehouse).writer() as con:
            assert con.execute("SELECT count(*) FROM main.invoices").fetchone()[0] == 40
