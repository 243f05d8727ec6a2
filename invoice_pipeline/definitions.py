"""The code location Dagster loads (workspace.yaml, dg): the definitions built from the config.

Importing this module does nothing but define `defs`: Dagster calls it when it loads the code
location (`@dg.definitions`), so an import (a test, a tool listing modules) reads no config file
and touches no simulator or socket. What it builds from is decided by defs/loading.py: the config
file when there is one, else the built-in simulators' config on their default ports
(docs/OPERATIONS.md, "The code location").
"""

import dagster as dg

from invoice_pipeline.defs import build_definitions
from invoice_pipeline.defs.loading import resolve_app_config


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(resolve_app_config())
