"""The code location Dagster loads (workspace.yaml, dg): assembles definitions from the config."""

from invoice_pipeline.defs import build_definitions
from invoice_pipeline.defs.loading import resolve_app_config

defs = build_definitions(resolve_app_config())
