"""Named points at which a test can freeze a real run, to kill it exactly there.

Set INVOICE_PIPELINE_PAUSE_AT to a point's name and INVOICE_PIPELINE_PAUSE_FILE to a path: the run
writes its pid to that file when it reaches the point and then sleeps until it is killed. Unset (as
always outside tests), a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

POINTS = ("extract", "batch_write", "checks", "history", "publish", "lake")


def pause_point(name: str) -> None:
    if os.environ.get("INVOICE_PIPELINE_PAUSE_AT") != name:
        return
    Path(os.environ["INVOICE_PIPELINE_PAUSE_FILE"]).write_text(str(os.getpid()))
    while True:  # until the test kills this process
        time.sleep(60)
