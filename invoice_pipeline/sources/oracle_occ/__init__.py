"""Oracle Fusion Receivables invoices through Oracle Commerce Cloud self-service (docs/SOURCES.md, "oracle_occ")."""

from invoice_pipeline.sources.oracle_occ.client import OracleOccSource

SOURCE_CLASS = OracleOccSource
