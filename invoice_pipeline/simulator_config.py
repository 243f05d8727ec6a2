"""The built-in simulators' default config: the ports `invoice-pipeline simulate` serves on, and the
config pointing at them that Dagster loads when no config file is given (defs/loading.py).

Each simulator declares its own `default_port` and `demo_name` (its class attributes, read through
source_types.py): nothing here names a source type. Below the Dagster definitions and simulate.py,
which both use it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import yaml

from invoice_pipeline.config import AppConfig, parse_config
from invoice_pipeline.source_types import default_port, demo_source_name, known_types, simulator_class

log = logging.getLogger("invoice_pipeline.simulate")

SIMULATE_CONFIG = Path("data/simulate.yaml")


def available_simulators() -> list[str]:
    """The registered source types that ship a simulator, in registry order."""
    types = []
    for t in known_types():
        try:
            simulator_class(t)
            types.append(t)
        except (ImportError, AttributeError):
            log.debug("no simulator for %s yet", t)
    return types


def default_ports() -> dict[str, int]:
    """Type -> the port `invoice-pipeline simulate` serves its simulator on (0: a free one)."""
    return {t: default_port(t) for t in available_simulators()}


def demo_source_names() -> dict[str, str]:
    """Type -> the source name its simulator gets in the demo's and `simulate`'s config."""
    return {t: demo_source_name(t) for t in available_simulators()}


def simulator_app_config() -> AppConfig:
    """Config for the simulators `invoice-pipeline simulate` serves: its file, else their default ports.

    Without the file each simulator is created once, on a free loopback port and never served, only
    to ask it for its config block; call this when the config is needed, never at import."""
    if SIMULATE_CONFIG.is_file():
        return parse_config(yaml.safe_load(SIMULATE_CONFIG.read_text()))
    sources = {}
    for type_name in available_simulators():
        sim = simulator_class(type_name)(size=1, port=0)
        block = sim.source_config()
        sim.stop()
        port = default_port(type_name)
        if port:  # 0: served on a free port, found only in SIMULATE_CONFIG
            parts = urlsplit(block["base_url"])
            block["base_url"] = urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))
        sources[demo_source_name(type_name)] = block
    return parse_config({"sources": sources})
