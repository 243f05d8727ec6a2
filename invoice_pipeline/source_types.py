"""Registry of source systems: `type:` in the config -> the package implementing it.

A new source system is one new folder under sources/ plus one line here. Imports are lazy so
that loading the registry does not import every client. It imports nothing of the package:
config validation looks source types up here, below everything a source package builds on.
"""

from __future__ import annotations

import importlib
import importlib.util

SOURCE_PACKAGES: dict[str, str] = {
    "oracle_occ": "invoice_pipeline.sources.oracle_occ",
    "crmcom": "invoice_pipeline.sources.crmcom",
    "softwareone": "invoice_pipeline.sources.softwareone",
    "agvance": "invoice_pipeline.sources.agvance",
}


def _available(type_name: str) -> bool:
    if importlib.util.find_spec(SOURCE_PACKAGES[type_name]) is None:
        return False
    return hasattr(importlib.import_module(SOURCE_PACKAGES[type_name]), "SOURCE_CLASS")


def known_types() -> list[str]:
    return [t for t in SOURCE_PACKAGES if _available(t)]


def source_class(type_name: str) -> type:
    """The Source subclass (sources/base.py) of a type; each package exposes it as SOURCE_CLASS."""
    module = importlib.import_module(SOURCE_PACKAGES[type_name])
    return module.SOURCE_CLASS


def simulator_class(type_name: str):
    """The simulator of a type; each package exposes it as SIMULATOR_CLASS (in simulator.py)."""
    module = importlib.import_module(SOURCE_PACKAGES[type_name] + ".simulator")
    return module.SIMULATOR_CLASS
