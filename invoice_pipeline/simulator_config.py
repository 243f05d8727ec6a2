"""The built-in simulators' default config: the fixed ports `invoice-pipeline simulate` serves on, and
the config pointing at them that Dagster loads when no config file is given (defs/loading.py).

Below the Dagster definitions and simulate.py, which both use it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import yaml

from invoice_pipeline.config import AppConfig, parse_config
from invoice_pipeline.source_types import known_types, simulator_class

log = logging.getLogger("invoice_pipeline.simulate")

# Fixed ports for `invoice-pipeline simulate`, so `dagster dev` finds the simulators without a config.
DEFAULT_PORTS = {"oracle_occ": 8701, "crmcom": 8702, "softwareone": 8703, "agvance": 8704}
DEMO_SOURCE_NAMES = {"oracle_occ": "oracle_us", "crmcom": "crm_eu", "softwareone": "swo", "agvance": "agvance_main"}
SIMULATE_CONFIG = Path("data/simulate.yaml")


def available_simulators() -> list[str]:
    types = []
    for t in known_types():
        try:
            simulator_class(t)
            types.append(t)
        except (ImportError, AttributeError):
            log.debug("no simulator for %s yet", t)
    return types


def simulator_app_config() -> AppConfig:
    """Config for simulators on DEFAULT_PORTS (what `invoice-pipeline simulate` serves)."""
    if SIMULATE_CONFIG.is_file():
        return parse_config(yaml.safe_load(SIMULATE_CONFIG.read_text()))
    sources = {}
    for type_name in available_simulators():
        sim = simulator_class(type_name)(size=1, port=0)  # only to ask it for its config block
        block = sim.source_config()
        sim.stop()
        parts = urlsplit(block["base_url"])
        block["base_url"] = urlunsplit(parts._replace(netloc=f"127.0.0.1:{DEFAULT_PORTS[type_name]}"))
        sources[DEMO_SOURCE_NAMES[type_name]] = block
    return parse_config({"sources": sources})
