"""Agvance (SSI) Web API invoices: session login and self-splitting lastModified windows (docs/SOURCES.md, "agvance")."""

from invoice_pipeline.sources.agvance.client import AgvanceSource

SOURCE_CLASS = AgvanceSource
