"""CRM.COM Web API invoices (docs/SOURCES.md, "crmcom")."""

from invoice_pipeline.sources.crmcom.client import CrmcomSource

SOURCE_CLASS = CrmcomSource
