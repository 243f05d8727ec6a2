"""invoice_pipeline: incremental AR invoice ETL into DuckDB and Parquet, orchestrated by Dagster."""

__version__ = "0.1.0"
