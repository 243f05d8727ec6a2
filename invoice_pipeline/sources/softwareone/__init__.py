"""SoftwareOne Marketplace billing invoices (SPEC 2.3): RQL incremental filter, $meta paging."""

from invoice_pipeline.sources.softwareone.client import SoftwareOneSource

SOURCE_CLASS = SoftwareOneSource
