"""CRM.COM mapping: exact Decimals from noisy floats, tax lines from both tax models, local dates."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from invoice_pipeline import conformed
from invoice_pipeline.money import MappingError
from invoice_pipeline.sources.crmcom.mapping import local_date, map_invoice

# The third invoice of fixtures/api_docs/crmcom_002_invoices_list.json (pre-R12: VAT fields only),
# account owner trimmed.
DOC_INVOICE = {
    "notes": None, "udf_float_1": None, "udf_float_2": None,
    "invoice_item_set": [
        {"vat_percentage": 15, "sub_total": 31.05, "discount_amount": 3,
         "vat_rate": {"name": "Standard", "id": "B07FADC7060C61AC7B721252A6A0C5C2", "description": None, "alternative_code": "STN"},
         "discount_percentage": 10, "net_amount": 30, "id": "852A14314A3C33AC1DB28E84B8903BCF", "quantity": 0, "cost": 0,
         "vat_amount": 4.05, "product": {"id": "E32627E0EBB8EC74E8C4FBA0865CDF50", "description": "Entertainment",
                                         "code": "Entertainment", "alternative_code": None}},
        {"vat_percentage": 6, "sub_total": 9.01, "discount_amount": 1.5,
         "vat_rate": {"name": "Low VAT Rate", "id": "152BFE506603FFF5B71C9B45248B0637", "description": None, "alternative_code": "LVR"},
         "discount_percentage": 15, "net_amount": 10, "id": "C4E82DB571AFCEDCD4AD039BA892F5D2", "quantity": 0, "cost": 0,
         "vat_amount": 0.51, "product": {"id": "DE37CF1696E3CD4E8EF89F522019D385", "description": "Documentaries",
                                         "code": "Documentaries", "alternative_code": None}},
        {"vat_percentage": 6, "sub_total": 42.4, "discount_amount": 0,
         "vat_rate": {"name": "Standard 2", "id": "17C3CC33CED167090E68D6802A5E0CE0", "description": "reerddd", "alternative_code": "STN2"},
         "discount_percentage": 0, "net_amount": 40, "id": "CF2E917C1B4EF21C9F2D8FDC4D3B5B0A", "quantity": 0, "cost": 0,
         "vat_amount": 2.4, "product": {"id": "F43EBDCE48CAADEC32CB26F59904ECCD", "description": "Smart Card",
                                        "code": "Smart Card", "alternative_code": None}},
    ],
    "udf_float_3": None, "number": "I00000499", "udf_float_4": None, "due_on": "2014-10-30T18:33:57",
    "accounts_receivable": {"life_cycle_state": "ACTIVE", "number": "401", "name": "Loucia Papapavlou",
                            "id": "ACAED91501DC6856A93E1E7E5AF6E5C0"},
    "discount_amount": 4.5, "id": "4150AED0A46C0237888DC2C3C22C5D01", "outstanding_amount": 0,
    "posted_on": "2014-10-29T18:36:11", "vat_amount": 6.96,
    "log_information": {"updated_date": "2014-10-30T15:58:36", "created_date": "2014-10-29T18:32:40"},
    "issued_on": "2014-10-29T18:32:40", "total_amount": 82.46, "life_cycle_state": "POSTED", "unsettled_amount": 0,
    "rejection_reason": None, "net_amount": 80, "reference_number": "543",
}


def r12_invoice() -> dict:
    """An R12+ invoice: applied_tax_rates (two on one item, one zero-rated), float noise, DRAFT."""
    inv = copy.deepcopy(DOC_INVOICE)
    inv.update(number=None, life_cycle_state="DRAFT", total_amount=3 * 59.97 + (0.1 + 0.2),
               outstanding_amount=180.81000000000003, tax_amount=0.30000000000000004,
               currency_rate_period={"id": "C7", "rate": 2.3, "currency": {"code": "GBP", "id": "9"}})
    inv["invoice_item_set"] = [
        {"id": "L1", "net_amount": 3 * 59.97, "discount_amount": 0.1 + 0.2, "quantity": 3, "vat_amount": 0.30000000000000004,
         "vat_rate": {"id": "VAT19", "alternative_code": "STN"}, "vat_percentage": 19,
         "product": {"code": "STB", "description": "Set-top box"},
         "applied_tax_rates": [
             {"tax_amount": 0.1 + 0.2, "tax_percentage": 19, "tax_rates": {"id": "VAT19", "alternative_code": "STN"}},
             {"tax_amount": 0, "tax_percentage": 0, "tax_rates": {"id": "ZR1", "alternative_code": "ZR"}},
         ]},
        {"id": "L2", "net_amount": 0.1 + 0.2, "discount_amount": 0, "quantity": 1.5,
         "applied_tax_rates": [{"tax_amount": 0.0, "tax_percentage": 0, "tax_rates": {"id": "ZR1", "alternative_code": "ZR"}}]},
    ]
    return inv


def test_doc_example_vat_only_record() -> None:
    c = conformed.finalize(map_invoice(DOC_INVOICE, "crm", timezone="Europe/Nicosia", currency="EUR"), derive_installment=True)
    inv = c.invoice
    assert [ln["line_amount"] for ln in c.lines] == [Decimal("27.0000"), Decimal("8.5000"), Decimal("40.0000")]
    assert [ln["line_number"] for ln in c.lines] == [1, 2, 3]
    assert [t["tax_line_id"] for t in c.tax_lines] == [
        "852A14314A3C33AC1DB28E84B8903BCF:B07FADC7060C61AC7B721252A6A0C5C2",
        "C4E82DB571AFCEDCD4AD039BA892F5D2:152BFE506603FFF5B71C9B45248B0637",
        "CF2E917C1B4EF21C9F2D8FDC4D3B5B0A:17C3CC33CED167090E68D6802A5E0CE0",
    ]
    assert [(t["tax_code"], t["tax_rate"], t["tax_amount"], t["is_derived"]) for t in c.tax_lines] == [
        ("STN", Decimal("15.000000"), Decimal("4.0500"), True),
        ("LVR", Decimal("6.000000"), Decimal("0.5100"), True),
        ("STN2", Decimal("6.000000"), Decimal("2.4000"), True),
    ]
    assert c.tax_lines[0]["taxable_amount"] == Decimal("27.0000")
    assert inv["net_amount"] == Decimal("75.5000") and inv["tax_amount"] == Decimal("6.9600")
    assert inv["total_amount"] == Decimal("82.4600") == inv["net_amount"] + inv["tax_amount"]
    assert inv["currency_code"] == "EUR"  # no currency_rate_period: the config's currency
    assert (inv["invoice_number"], inv["status"], inv["is_void"]) == ("I00000499", "POSTED", False)
    assert (inv["customer_id"], inv["customer_name"]) == ("ACAED91501DC6856A93E1E7E5AF6E5C0", "Loucia Papapavlou")
    # Naive times are Nicosia local (UTC+2 in late October 2014 after the DST switch on the 26th).
    assert inv["last_modified_at"] == datetime(2014, 10, 30, 13, 58, 36, tzinfo=UTC)
    assert inv["created_at"] == datetime(2014, 10, 29, 16, 32, 40, tzinfo=UTC)
    assert (inv["invoice_date"], inv["due_date"]) == (date(2014, 10, 29), date(2014, 10, 30))
    assert c.installments[0]["original_amount"] == Decimal("82.4600") and c.installments[0]["is_derived"]


def test_r12_applied_tax_rates_float_noise_and_draft() -> None:
    c = conformed.finalize(map_invoice(r12_invoice(), "crm", timezone="UTC"), derive_installment=True)
    inv = c.invoice
    assert inv["invoice_number"] is None and inv["status"] == "DRAFT"
    assert inv["currency_code"] == "GBP"
    assert [ln["line_amount"] for ln in c.lines] == [Decimal("179.6100"), Decimal("0.3000")]
    assert c.lines[1]["quantity"] == Decimal("1.500000")
    # One tax line per applied rate, the zero-rated ones included; the vat_* fields are not a second tax.
    assert [(t["tax_line_id"], t["tax_code"], t["tax_amount"]) for t in c.tax_lines] == [
        ("L1:VAT19", "STN", Decimal("0.3000")),
        ("L1:ZR1", "ZR", Decimal("0.0000")),
        ("L2:ZR1", "ZR", Decimal("0.0000")),
    ]
    assert not any(t["is_derived"] for t in c.tax_lines)
    assert inv["total_amount"] == Decimal("180.2100") == inv["net_amount"] + inv["tax_amount"]
    assert inv["balance_due"] == Decimal("180.8100")


def test_cancelled_is_void_and_untaxed_item_has_no_tax_line() -> None:
    inv = copy.deepcopy(DOC_INVOICE)
    inv["life_cycle_state"] = "CANCELLED"
    inv["invoice_item_set"][0].update(vat_amount=None, vat_rate=None, vat_percentage=None)
    c = map_invoice(inv, "crm")
    assert c.invoice["is_void"] is True
    assert len(c.tax_lines) == 2


def test_local_date_converts_aware_values_to_the_zone() -> None:
    assert local_date("2024-03-31T23:30:00", "f", "Europe/Nicosia") == date(2024, 3, 31)
    assert local_date("2024-03-31T22:30:00Z", "f", "Europe/Nicosia") == date(2024, 4, 1)
    assert local_date(None, "f", "UTC") is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.pop("id"), "id: missing"),
        (lambda p: p.update(total_amount="n/a"), "total_amount"),
        (lambda p: p["invoice_item_set"][1].update(net_amount=None), "C4E82DB571AFCEDCD4AD039BA892F5D2: net_amount"),
        (lambda p: p["invoice_item_set"][0].update(vat_amount=None), "vat_amount: missing"),
        (lambda p: p.update(issued_on="29/10/2014"), "issued_on"),
        (lambda p: p.update(accounts_receivable="401"), "accounts_receivable"),
        (lambda p: p["invoice_item_set"][2].update(applied_tax_rates=[{"tax_percentage": 6, "tax_rates": {"id": "X"}}]),
         "applied_tax_rates[0].tax_amount"),
    ],
)
def test_unmappable_records_name_the_field(change, message: str) -> None:
    payload = copy.deepcopy(DOC_INVOICE)
    change(payload)
    with pytest.raises(MappingError, match=message.replace("[", r"\[").replace("]", r"\]")):
        map_invoice(payload, "crm")


def test_item_tax_only_in_its_own_tax_amount_is_one_tax_line_besides_applied_and_vat() -> None:
    """R12+: an item may state its tax only in tax_amount; with applied_tax_rates or vat_* present, the
    item's tax_amount is the same tax again and adds no line."""
    inv = r12_invoice()
    inv["invoice_item_set"][0]["tax_amount"] = 0.30000000000000004  # beside applied_tax_rates: not a second tax
    inv["invoice_item_set"].append({"id": "L3", "net_amount": 10, "discount_amount": 0, "quantity": 1,
                                    "tax_amount": 1.9000000000000001})
    inv["total_amount"] = 3 * 59.97 + (0.1 + 0.2) + 11.9
    c = conformed.finalize(map_invoice(inv, "crm"), derive_installment=True)
    assert [(t["tax_line_id"], t["tax_code"], t["tax_rate"], t["tax_amount"], t["is_derived"]) for t in c.tax_lines] == [
        ("L1:VAT19", "STN", Decimal("19.000000"), Decimal("0.3000"), False),
        ("L1:ZR1", "ZR", Decimal("0.000000"), Decimal("0.0000"), False),
        ("L2:ZR1", "ZR", Decimal("0.000000"), Decimal("0.0000"), False),
        ("L3:tax", None, None, Decimal("1.9000"), True),
    ]
    assert c.invoice["net_amount"] + c.invoice["tax_amount"] == c.invoice["total_amount"] == Decimal("192.1100")


@pytest.mark.parametrize(("state", "balance", "category"),
                         [("DRAFT", 5, "draft"), ("POSTED", 5, "open"), ("POSTED", 0, "paid"), ("REJECTED", 5, "void"),
                          ("CANCELLED", 0, "void")])
def test_status_category_and_void(state: str, balance: float, category: str) -> None:
    inv = copy.deepcopy(DOC_INVOICE)
    inv.update(life_cycle_state=state, outstanding_amount=balance)
    mapped = map_invoice(inv, "crm").invoice
    assert (mapped["status_category"], mapped["is_void"], mapped["freight_amount"]) == (
        category, category == "void", Decimal("0.0000"))
