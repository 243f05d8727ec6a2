"""CRM.COM Web API invoices (SPEC 2.2)."""

from invoice_pipeline.sources.crmcom.client import CrmcomSource

SOURCE_CLASS = CrmcomSource
