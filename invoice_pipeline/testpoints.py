"""Named points at which a test can freeze a real run, to kill it exactly there.

Set INVOICE_PIPELINE_PAUSE_AT to a point's name: when the run reaches it, it prints
"INVOICE_PIPELINE_PAUSE_AT: paused at <name>" on stderr, writes its pid to INVOICE_PIPELINE_PAUSE_FILE
if that is set, and sleeps until it is killed. Unset (as always outside tests), a point costs one
dictionary lookup.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

PAUSE_ENV = "INVOICE_PIPELINE_PAUSE_AT"
# The stages test_crash_recovery.py kills a run at; the lake has finer points of its own
# ("lake_write:<table>", "lake_switch", "lake_switched": test_lake_switch.py).
POINTS = ("extract", "batch_write", "checks", "history", "publish", "lake")


def pause_point(name: str) -> None:
    if os.environ.get(PAUSE_ENV) != name:
        return
    print(f"{PAUSE_ENV}: paused at {name}", file=sys.stderr, flush=True)
    if os.environ.get("INVOICE_PIPELINE_PAUSE_FILE"):
        Path(os.environ["INVOICE_PIPELINE_PAUSE_FILE"]).write_text(str(os.getpid()))
    while True:  # until the test kills this process
        time.sleep(60)
