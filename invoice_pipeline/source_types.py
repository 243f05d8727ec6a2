"""Registry of source systems: `type:` in the config -> the package implementing it.

A new source system is one folder (a package) plus one registry line:
- inside this repository: the folder `invoice_pipeline/sources/<type>/` and its line in SOURCE_PACKAGES;
- in another distribution (a plugin): its package and one entry point in the group ENTRY_POINT_GROUP,
  `<type> = "<package>"`, declared in that distribution's pyproject.toml (docs/SOURCE_GUIDE.md).

The package exposes SOURCE_CLASS (a sources/base.py Source); its `simulator` module exposes
SIMULATOR_CLASS, whose class attributes `default_port` and `demo_name` say where
`invoice-pipeline simulate` serves it and what the demo calls its source. Everything that lists
sources (config validation, simulate, demo, the Dagster code location) asks this registry.

Imports are lazy so that loading the registry does not import every client. It imports nothing of
the package: config validation looks source types up here, below everything a source package builds on.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import logging

log = logging.getLogger("invoice_pipeline.config")

SOURCE_PACKAGES: dict[str, str] = {
    "oracle_occ": "invoice_pipeline.sources.oracle_occ",
    "crmcom": "invoice_pipeline.sources.crmcom",
    "softwareone": "invoice_pipeline.sources.softwareone",
    "agvance": "invoice_pipeline.sources.agvance",
}
ENTRY_POINT_GROUP = "invoice_pipeline.source_types"


@functools.cache
def _plugin_packages() -> dict[str, str]:
    """Source types other installed distributions declare (read once per process; see refresh())."""
    found: dict[str, str] = {}
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in SOURCE_PACKAGES:
            log.warning("entry point %s = %r ignored: %r is a built-in source type", entry.name, entry.value,
                        entry.name)
            continue
        found[entry.name] = entry.module  # "<package>" (a ":attr" suffix would be meaningless here)
    return found


def refresh() -> None:
    """Forget the plugins read so far (after installing one, or a test changing sys.path)."""
    _plugin_packages.cache_clear()


def source_packages() -> dict[str, str]:
    """Every registered type -> its package: the built-in ones, then the plugins'."""
    return {**SOURCE_PACKAGES, **_plugin_packages()}


def _package(type_name: str) -> str:
    packages = source_packages()
    if type_name not in packages:
        raise KeyError(f"unknown source type {type_name!r} (known: {', '.join(packages)})")
    return packages[type_name]


def _available(package: str) -> bool:
    if importlib.util.find_spec(package) is None:
        return False
    return hasattr(importlib.import_module(package), "SOURCE_CLASS")


def known_types() -> list[str]:
    return [t for t, package in source_packages().items() if _available(package)]


def source_class(type_name: str) -> type:
    """The Source subclass (sources/base.py) of a type; each package exposes it as SOURCE_CLASS."""
    return importlib.import_module(_package(type_name)).SOURCE_CLASS


def mapping_module(type_name: str) -> str:
    """The module name of a type's mapping (its COLUMN_SOURCES documents the conformed columns)."""
    return _package(type_name) + ".mapping"


def simulator_class(type_name: str):
    """The simulator of a type; each package exposes it as SIMULATOR_CLASS (in simulator.py)."""
    return importlib.import_module(_package(type_name) + ".simulator").SIMULATOR_CLASS


def default_port(type_name: str) -> int:
    """Where `invoice-pipeline simulate` serves this type's simulator (its `default_port`; 0 = any free port)."""
    return int(getattr(simulator_class(type_name), "default_port", 0))


def demo_source_name(type_name: str) -> str:
    """The source name the demo and `simulate` give this type's simulator (its `demo_name`, else the type)."""
    return str(getattr(simulator_class(type_name), "demo_name", "") or type_name)
