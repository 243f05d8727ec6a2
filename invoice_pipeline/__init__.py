"""invoice_pipeline: incremental AR invoice ETL into DuckDB and Parquet, orchestrated by Dagster."""

import os

__version__ = "0.1.0"

# Arrow's default allocator (mimalloc) keeps what it freed, so a publish's peak stayed for the rest
# of the process; the system allocator returns memory between steps and prepares batches as fast
# (figures: benchmarks/RESULTS.md, "Figures behind design choices in the code"). Read by Arrow when its default
# pool is first used, so it must be set before that; an explicit setting of the operator's wins.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
