"""Agvance (SSI) Web API invoices: session login and self-splitting lastModified windows (SPEC 2.4)."""

from invoice_pipeline.sources.agvance.client import AgvanceSource

SOURCE_CLASS = AgvanceSource
