"""The source assets' launch config: `backfill: {start, end}`, checked before a run exists.

The launchpad checks a run config against the config schema's types only, as you type (pydantic
validators of `dg.Config` classes run later, when the step starts). What Dagster does run before it
creates a run is the post-processing of each config value, in the code location, when the Launch
button asks for the execution plan: a value refused there fails the launch with an error naming its
path (`root:ops:<source>__invoices:config:backfill:start`) and no run is created. So each bound is a
config scalar whose post-processing parses it, and the backfill shape's checks start <= end.
"""

from typing import Any

import dagster as dg
from dagster._config.config_type import ConfigScalar, ConfigScalarKind
from dagster._config.errors import PostProcessingError

from invoice_pipeline.sources.base import Window
from invoice_pipeline.timeutil import parse_timestamp

EXAMPLE = "2024-03-01T00:00:00Z"


class IsoTimestamp(ConfigScalar):
    """A string the launch refuses unless it is an ISO-8601 timestamp (a naive one is read as UTC)."""

    def __init__(self) -> None:
        super().__init__(key="InvoicePipelineIsoTimestamp", given_name="IsoTimestamp",
                         scalar_kind=ConfigScalarKind.STRING,
                         description=f"ISO-8601 timestamp, e.g. {EXAMPLE}; without an offset it is read as UTC")

    def post_process(self, value: Any) -> Any:
        try:
            parse_timestamp(value)
        except ValueError:
            raise PostProcessingError(f"{value!r} is not an ISO-8601 timestamp (e.g. {EXAMPLE})") from None
        return value


class _BackfillShape(dg.Shape):
    """{start, end}, both required, start not after end.

    dg.Shape caches instances by their fields' hash and always builds a plain Shape; this subclass
    opts out of that cache (its description makes its key unique) to add the ordering check."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_BackfillShape":
        instance = object.__new__(cls)
        instance._initialized = False
        return instance

    def post_process(self, value: Any) -> Any:
        if parse_timestamp(value["start"]) > parse_timestamp(value["end"]):
            raise PostProcessingError(f"backfill.start {value['start']} is after backfill.end {value['end']}")
        return value


_TIMESTAMP = IsoTimestamp()
BACKFILL = _BackfillShape(
    {
        "start": dg.Field(_TIMESTAMP, description=f"Inclusive lower bound of last-modified times, e.g. {EXAMPLE}"),
        "end": dg.Field(_TIMESTAMP, description="Inclusive upper bound of last-modified times, e.g. 2024-03-31T23:59:59Z"),
    },
    description="Re-read this window of last-modified times (both bounds required); never moves the cursor.",
)
SOURCE_RUN_CONFIG = {"backfill": dg.Field(BACKFILL, is_required=False,
                                          description="Leave out for the incremental run from the cursor.")}


def backfill_window(op_config: dict[str, Any] | None) -> Window | None:
    """The window a launch config asks for, or None for the incremental run."""
    backfill = (op_config or {}).get("backfill")
    if backfill is None:
        return None
    start, end = parse_timestamp(backfill["start"]), parse_timestamp(backfill["end"])
    if start > end:  # refused at launch already; a run config edited around the launchpad gets here
        raise dg.Failure(f"backfill.start {backfill['start']} is after backfill.end {backfill['end']}")
    return Window(start, end)
