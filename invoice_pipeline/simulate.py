"""The built-in simulators as a whole: start them, and the config that points the pipeline at them."""

from __future__ import annotations

import logging
import os
import shlex
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

from invoice_pipeline.config import parse_config
from invoice_pipeline.simulation import Knobs, SimulatorServer
from invoice_pipeline.simulator_config import (  # noqa: F401 - simulator_app_config re-exported
    SIMULATE_CONFIG, available_simulators, default_ports, simulator_app_config)
from invoice_pipeline.source_types import demo_source_name, simulator_class

log = logging.getLogger("invoice_pipeline.simulate")


def start_simulators(
    stack: ExitStack, size: int = 200, knobs: Knobs | None = None, ports: dict[str, int] | None = None,
    types: list[str] | None = None,
) -> dict[str, SimulatorServer]:
    """Start one simulator per source type (closed with the stack); returns them by source name (each
    simulator's `demo_name`). ports: type -> port, 0 or absent = a free one."""
    sims: dict[str, SimulatorServer] = {}
    for type_name in types or available_simulators():
        port = (ports or {}).get(type_name, 0)
        sim = simulator_class(type_name)(size=size, knobs=knobs or Knobs(), port=port)
        stack.enter_context(sim)
        sims[demo_source_name(type_name)] = sim
    return sims


def config_document(sims: dict[str, SimulatorServer], warehouse: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"sources": {name: sim.source_config() for name, sim in sims.items()}}
    if warehouse:
        doc["warehouse"] = warehouse
    return doc


def write_config(doc: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Written by invoice-pipeline: points at the built-in simulators.\n" + yaml.safe_dump(doc, sort_keys=False))
    return path


def start_serving(
    stack: ExitStack, size: int, knobs: Knobs, ports: dict[str, int] | None = None, config_path: Path = SIMULATE_CONFIG,
) -> dict[str, SimulatorServer]:
    """Start the simulators, write the config that points at them and the local Dagster instance.

    The instance (data/dagster_home/dagster.yaml unless DAGSTER_HOME is set) gets the pool limit and
    the managed `invoice_pipeline` loggers, so `dagster dev` shows progress lines in the run logs.
    """
    from invoice_pipeline.runner import ensure_dagster_home

    sims = start_simulators(stack, size=size, knobs=knobs, ports=default_ports() if ports is None else ports)
    write_config(config_document(sims), config_path)
    ensure_dagster_home(Path(parse_config(yaml.safe_load(config_path.read_text())).warehouse.duckdb_path))
    return sims


def serve_forever(size: int, knobs: Knobs, port_base: int | None = None) -> None:
    """port_base: the simulators' first port (the others follow in registry order); 0 = free ports;
    None = each simulator's `default_port`."""
    ports = None
    if port_base is not None:
        ports = {t: (port_base + i if port_base else 0) for i, t in enumerate(available_simulators())}
    with ExitStack() as stack:
        sims = start_serving(stack, size, knobs, ports)
        for name, sim in sims.items():
            print(f"  {name:14s} {type(sim).__name__:28s} {sim.base_url}")
        home = os.environ["DAGSTER_HOME"]
        print(f"config written to {SIMULATE_CONFIG} (Dagster picks it up when no other config is given)")
        print(f"Dagster instance (run history, schedules, pool limits): {home}")
        print(f"In another terminal:\n  export DAGSTER_HOME={shlex.quote(home)}\n  dagster dev -w workspace.yaml   # or: dg dev")
        print("Ctrl-C stops the simulators", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
