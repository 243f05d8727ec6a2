"""Which configuration the Dagster definitions are built from.

The config file (README, "Running against real APIs") when there is one; otherwise the built-in simulators' config, so
`dagster dev -w workspace.yaml` works on a fresh clone next to `invoice-pipeline simulate`.
"""

from __future__ import annotations

import os

from invoice_pipeline.config import AppConfig, load_config, resolve_config_path


def resolve_app_config(path: str | None = None) -> AppConfig:
    resolved = resolve_config_path(path)
    if path or os.environ.get("INVOICE_PIPELINE_CONFIG") or resolved.is_file():
        return load_config(resolved)
    from invoice_pipeline.simulator_config import simulator_app_config

    return simulator_app_config()
