"""SoftwareOne Marketplace billing invoices (docs/SOURCES.md, "softwareone"): RQL incremental filter, $meta paging."""

from invoice_pipeline.sources.softwareone.client import SoftwareOneSource

SOURCE_CLASS = SoftwareOneSource
