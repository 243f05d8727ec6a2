"""Resources: the loaded configuration and the warehouse built from it."""


from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

import dagster as dg

from invoice_pipeline.config import AppConfig
from invoice_pipeline.warehouse import Warehouse


class PipelineResource(dg.ConfigurableResource):
    """Gives assets the validated config file and its warehouse (one per code location)."""

    config_path: str = ""

    @cached_property
    def app(self) -> AppConfig:
        from invoice_pipeline.defs.loading import resolve_app_config

        return resolve_app_config(self.config_path or None)

    @cached_property
    def warehouse(self) -> Warehouse:
        return Warehouse(self.app.warehouse)

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator["PipelineResource"]:
        # One warehouse connection shared by the run's steps in this process (see Warehouse.session):
        # an in-process run (the CLI) opens the file once instead of once per step and check.
        if self.app.warehouse.backend == "iceberg":  # no DuckDB file (defs/iceberg_assets.py)
            yield self
            return
        with self.warehouse.session():
            yield self
