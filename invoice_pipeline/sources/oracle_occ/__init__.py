"""Oracle Fusion Receivables invoices through Oracle Commerce Cloud self-service (SPEC 2.1)."""

from invoice_pipeline.sources.oracle_occ.client import OracleOccSource

SOURCE_CLASS = OracleOccSource
