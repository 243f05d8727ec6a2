"""The vendors' documented example payloads (fixtures/api_docs/, copied from their API documents) and
variants built from them (freight, credits, tax-only items), plus a way to load given payloads through the real pipeline.

The variants change only what each vendor's documentation says real tenants send: Oracle freight
(invoice 891371 of the list example carries FreightAmount "10" inside EnteredAmount) and credit
memos (negative as sent), CRM.COM items whose tax is only in their own tax_amount, REJECTED and
CREDIT_NOTE documents, SoftwareOne Credit documents (positive as sent) and its published statuses.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from invoice_pipeline.config import AppConfig
from invoice_pipeline.pipeline import RunSummary, build_source, run_source
from invoice_pipeline.sources.base import Source, SourceRecord, Window

FIXTURES = Path(__file__).parent / "fixtures" / "api_docs"
START = "2000-01-01T00:00:00Z"  # the examples date from 2014 on: nothing is before the start date

CONFIG_BLOCKS: dict[str, dict[str, Any]] = {
    "oracle_occ": {"type": "oracle_occ", "base_url": "http://127.0.0.1:9", "username": "u", "password": "p"},
    "crmcom": {"type": "crmcom", "base_url": "http://127.0.0.1:9", "username": "u", "password": "p",
               "organisation": "ACME"},
    "softwareone": {"type": "softwareone", "base_url": "http://127.0.0.1:9", "api_token": "t"},
    "agvance": {"type": "agvance", "base_url": "http://127.0.0.1:9", "api_key": "k", "username": "u",
                "password": "p", "database_id": "1"},
}


def example(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def oracle_list_items() -> list[dict[str, Any]]:
    return example("oracle_occ_000_list.json")["items"]


def oracle_detail() -> dict[str, Any]:
    return example("oracle_occ_001_detail.json")


def crmcom_invoices() -> list[dict[str, Any]]:
    return example("crmcom_002_invoices_list.json")["data"]


def crmcom_partial_invoices() -> list[dict[str, Any]]:
    return example("crmcom_002_invoices_list_fields.json")["data"]


def softwareone_invoices() -> list[dict[str, Any]]:
    return example("softwareone_003_invoices.json")["data"]


def agvance_records() -> list[dict[str, Any]]:
    return example("agvance_004_invoices_list.json")["InvoiceRecords"]


# -- variants: freight, credits, tax-only items -----------------------------------------------
def oracle_freight_detail() -> dict[str, Any]:
    """Invoice 891371 of the list example (EnteredAmount 3016 with FreightAmount "10") as a detail:
    the header as listed, two lines of the documented detail shape adding up to 3006 with their tax."""
    header = next(i for i in oracle_list_items() if i["CustomerTransactionId"] == "891371")
    assert (header["EnteredAmount"], header["FreightAmount"]) == ("3016", "10")
    detail = copy.deepcopy(oracle_detail())
    lines = detail["receivablesInvoiceLines"]["items"][:2]
    for n, (amount, tax) in enumerate((("2000", "160"), ("780", "66")), start=1):
        line = lines[n - 1]
        line.update(LineNumber=str(n), LineAmount=amount, UnitSellingPrice=amount,
                    CustomerTransactionLineId=f"891371{n:02d}", AllocatedFreightAmount="5")
        line["receivablesInvoiceLineTaxLines"]["items"][0].update(
            TaxAmount=tax, TaxableAmount=amount, CustomerTransactionLineId=f"891371{n:02d}1")
    detail.update({k: v for k, v in header.items() if k != "@context"})
    detail["receivablesInvoiceLines"] = {**detail["receivablesInvoiceLines"], "count": 2, "items": lines}
    detail["receivablesInvoiceInstallments"]["items"][0].update(
        OriginalAmount="3016", InstallmentBalanceDue="3016", InstallmentFreightAmountOriginal="10",
        InstallmentFreightAmountDue="10")
    detail["LastUpdateDate"] = "2022-10-11T09:00:00+00:00"
    return detail


def oracle_credit_memo() -> dict[str, Any]:
    """The documented detail as a credit memo: Oracle sends a credit memo's amounts negative."""
    cm = copy.deepcopy(oracle_detail())
    cm.update(CustomerTransactionId="901999", TransactionNumber="CM-5012", TransactionType="Credit Memo",
              EnteredAmount="-1250", InvoiceBalanceAmount="-1250", FreightAmount=None)
    for line in cm["receivablesInvoiceLines"]["items"]:
        line["LineAmount"] = "-" + line["LineAmount"]
        line["Quantity"] = "-" + line["Quantity"]
        for tax in line["receivablesInvoiceLineTaxLines"]["items"]:
            tax["TaxAmount"], tax["TaxableAmount"] = "-" + tax["TaxAmount"], "-" + tax["TaxableAmount"]
    for inst in cm["receivablesInvoiceInstallments"]["items"]:
        inst["OriginalAmount"], inst["InstallmentBalanceDue"] = "-1250", "-1250"
        inst["@context"]["key"] = "525999"
    return cm


def crmcom_tax_only() -> dict[str, Any]:
    """The documented POSTED invoice I00000499 (total 82.46, VAT 6.96) as an R12+ tenant sends it: each
    item's tax only in its own tax_amount, neither applied_tax_rates nor vat_*."""
    inv = copy.deepcopy(next(i for i in crmcom_invoices() if i["number"] == "I00000499"))
    inv["id"] = "TAXONLY499"
    for item in inv["invoice_item_set"]:
        item["tax_amount"] = item.pop("vat_amount")
        item.pop("vat_rate"), item.pop("vat_percentage")
    inv["tax_amount"] = inv.pop("vat_amount")
    return inv


def crmcom_variant(number: str, new_id: str, **changes: Any) -> dict[str, Any]:
    inv = copy.deepcopy(next(i for i in crmcom_invoices() if i["number"] == number))
    inv["id"] = new_id
    inv.update(changes)
    return inv


def softwareone_credit() -> dict[str, Any]:
    """The documented invoice as a Credit document: SoftwareOne sends a Credit with positive amounts.
    Its total is made to agree with its line (the documented example's placeholders do not)."""
    inv = copy.deepcopy(softwareone_invoices()[0])
    inv.update(id="CRN-123-456-789", type="Credit", status="Issued")
    inv["erpData"].update(invoiceTotal=1140, balanceDue=1140)
    return inv


# -- loading through the real pipeline ----------------------------------------------------------
class GivenPayloads:
    """A real source (its identify and mapping) whose extract yields the given payloads: no HTTP."""

    def __init__(self, inner: Source, payloads: list[dict[str, Any]]):
        self._inner = inner
        self._payloads = payloads

    def extract(self, window: Window) -> Iterator[list[SourceRecord]]:
        yield [self._inner.record_or_raw(p) for p in self._payloads]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def source_blocks(types: dict[str, str], **extra: Any) -> dict[str, dict[str, Any]]:
    """{source name: config block} for {source name: type}."""
    return {name: {**CONFIG_BLOCKS[t], "start_date": START, **extra.get(name, {})} for name, t in types.items()}


def load(app: AppConfig, source_name: str, payloads: list[dict[str, Any]]) -> RunSummary:
    src = build_source(app, source_name)
    return run_source(app, source_name, source=GivenPayloads(src, payloads))  # type: ignore[arg-type]
