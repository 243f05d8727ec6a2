"""CRM.COM simulator: the API's envelope and errors, payload shape, determinism, mutations, scale."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests

from invoice_pipeline.simulation import Knobs
from invoice_pipeline.sources.crmcom.simulator import CrmcomSimulator

# Keys of an invoice in the 002_ examples (pre-R12 shape), and what R9.1-R13 added.
DOC_INVOICE_KEYS = {
    "notes", "invoice_item_set", "number", "due_on", "accounts_receivable", "discount_amount", "id", "outstanding_amount",
    "posted_on", "vat_amount", "log_information", "issued_on", "total_amount", "life_cycle_state", "unsettled_amount",
    "rejection_reason", "net_amount", "type", "reference_number", "category",
    *(f"udf_float_{n}" for n in range(1, 5)), *(f"udf_string_{n}" for n in range(1, 9)), *(f"udf_date_{n}" for n in range(1, 5)),
}
LATER_KEYS = {"tax_amount", "currency_rate_period", "back_office_code", "member_account", "accounting_period_information"}
DOC_ITEM_KEYS = {"vat_percentage", "sub_total", "discount_amount", "vat_rate", "discount_percentage", "net_amount", "id",
                 "quantity", "cost", "vat_amount", "product"}
LOG_KEYS = {"updated_date", "created_by_unit", "created_date", "updated_by_unit", "created_by_user", "updated_by_user"}


@pytest.fixture(scope="module")
def sim() -> Iterator[CrmcomSimulator]:
    with CrmcomSimulator(size=300, knobs=Knobs(seed=5)) as server:
        yield server


def call(sim: CrmcomSimulator, path: str, **params: Any) -> requests.Response:
    return requests.get(sim.base_url + path, params=params, timeout=10)


def token(sim: CrmcomSimulator) -> str:
    body = requests.post(sim.base_url + "/authentication/token", timeout=10, json={
        "username": "sim_user", "password": "sim_password", "organisation": "ACME"}).json()
    assert body["status"]["code"] == "OK"
    return body["data"]["token"]


def all_invoices(sim: CrmcomSimulator) -> list[dict[str, Any]]:
    tok, out = token(sim), []
    for ar in call(sim, "/accounts_receivable/list", token=tok).json()["data"]:
        out += call(sim, "/invoices/list", token=tok, accounts_receivable_identifier=f"id={ar['id']}").json()["data"]
    return out


def test_envelope_errors(sim: CrmcomSimulator) -> None:
    tok = token(sim)
    bad = call(sim, "/invoices/list", token="nope", accounts_receivable_identifier=f"id={sim.accounts[0]['id']}")
    assert bad.status_code == 401 and bad.json()["status"]["code"] == "INVALID_TOKEN"
    none = call(sim, "/invoices/list", token=tok)
    assert none.status_code == 200 and none.json()["status"]["code"] == "MISSING_PARAMETER"
    two = requests.get(sim.base_url + "/invoices/list", timeout=10, params=[
        ("token", tok), ("accounts_receivable_identifier", f"id={sim.accounts[0]['id']}"),
        ("accounts_receivable_identifier", f"id={sim.accounts[1]['id']}")])
    assert two.json()["status"]["code"] == "MISSING_PARAMETER"
    login = requests.post(sim.base_url + "/authentication/token", json={"username": "x", "password": "y", "organisation": "ACME"}, timeout=10)
    assert login.status_code == 200 and login.json()["status"]["code"] != "OK"
    release = requests.post(sim.base_url + "/authentication/token/release", json={"token": tok}, timeout=10)
    assert release.json()["status"]["code"] == "OK" and tok in sim.released
    assert call(sim, "/accounts_receivable/list", token=tok).status_code == 401


def test_page_cap_and_identifier_forms(sim: CrmcomSimulator) -> None:
    tok = token(sim)
    key = sim.accounts[0]
    assert len(sim._by_ar[0]) == 75
    by_number = call(sim, "/invoices/list", token=tok, accounts_receivable_identifier=f"number={key['number']}",
                     number_of_results=50, offset=50).json()["data"]
    assert len(by_number) == 25 and all(i["accounts_receivable"]["id"] == key["id"] for i in by_number)
    with CrmcomSimulator(size=2004) as big:
        tok = token(big)
        page = call(big, "/invoices/list", token=tok, accounts_receivable_identifier=f"id={big.accounts[0]['id']}",
                    number_of_results=1000).json()["data"]
        assert len(big._by_ar[0]) == 501 and len(page) == 500
    fields = call(sim, "/invoices/list", token=token(sim), accounts_receivable_identifier=f"id={key['id']}",
                  fields_set="id,number,currency_rate_period").json()["data"]
    assert set().union(*(f.keys() for f in fields)) <= {"id", "number", "currency_rate_period"}


def test_payload_shape_matches_the_doc(sim: CrmcomSimulator) -> None:
    invoices = all_invoices(sim)
    assert len(invoices) == 300
    legacy = [i for i in invoices if "tax_amount" not in i]
    modern = [i for i in invoices if "tax_amount" in i]
    assert legacy and modern
    assert all(set(i) == DOC_INVOICE_KEYS for i in legacy)
    assert all(set(i) == DOC_INVOICE_KEYS | LATER_KEYS for i in modern)
    assert all(set(it) == DOC_ITEM_KEYS for i in legacy for it in i["invoice_item_set"])
    # R12+ items carry tax_amount and applied_tax_rates, or (tax-only items) tax_amount alone.
    assert all(set(it) in (DOC_ITEM_KEYS | {"tax_amount", "applied_tax_rates"}, DOC_ITEM_KEYS | {"tax_amount"})
               for i in modern for it in i["invoice_item_set"])
    assert any("applied_tax_rates" not in it for i in modern for it in i["invoice_item_set"])
    assert all(set(i["log_information"]) == LOG_KEYS for i in invoices)
    assert all(len(i["log_information"]["updated_date"]) == 19 for i in invoices)  # naive, no offset
    drafts = [i for i in invoices if i["life_cycle_state"] == "DRAFT"]
    assert drafts and all(i["number"] is None for i in drafts)
    assert {i["currency_rate_period"]["currency"]["code"] for i in modern if i["currency_rate_period"]} >= {"GBP"}
    assert any(len(it.get("applied_tax_rates", [])) == 2 for i in modern for it in i["invoice_item_set"])
    assert any(e["tax_percentage"] == 0 for i in modern for it in i["invoice_item_set"] for e in it.get("applied_tax_rates", []))
    # Real float noise: some amounts have more than 4 decimals in their JSON form.
    assert any(len(repr(i["total_amount"]).partition(".")[2]) > 4 for i in invoices)
    updated = [sim._local(inv.updated) for inv in sim.invoices]
    assert min(updated) >= "2024-01-02" and max(inv.updated for inv in sim.invoices) <= sim.created_at - timedelta(hours=1)


def test_deterministic_from_seed() -> None:
    with CrmcomSimulator(size=30, knobs=Knobs(seed=9)) as a, CrmcomSimulator(size=30, knobs=Knobs(seed=9)) as b:
        assert all_invoices(a) == all_invoices(b)
        with CrmcomSimulator(size=30, knobs=Knobs(seed=10)) as c:
            assert all_invoices(a) != all_invoices(c)


def test_inconsistent_rate_breaks_the_header_total_only() -> None:
    with CrmcomSimulator(size=400, knobs=Knobs(inconsistent_rate=0.1)) as sim:
        bad = [inv for inv in sim.invoices if inv.delta_cents]
        assert 20 <= len(bad) <= 60
        exp = sim.expected()
        assert exp["total_amount"] - exp["line_amount"] - exp["tax_amount"] == Decimal(sum(i.delta_cents for i in bad)) / 100
        assert not any(i.delta_cents for i in CrmcomSimulator(size=400).invoices)


def test_mutate_and_expected_since() -> None:
    with CrmcomSimulator(size=100) as sim:
        before = sim.expected()
        cut = datetime.now(UTC).replace(microsecond=0)
        totals_before = {inv.id: inv.total_cents() for inv in sim.invoices}
        touched = sim.mutate(updates=3, new=2, voids=2, delete_lines=1)
        assert {k: len(v) for k, v in touched.items()} == {"updated": 3, "new": 2, "voided": 2, "lines_deleted": 1}
        assert len({i for ids in touched.values() for i in ids}) == 8
        after = sim.expected(since=cut)
        assert after["invoices"] == 8
        assert sim.expected()["invoices"] == before["invoices"] + 2
        by_id = {inv.id: inv for inv in sim.invoices}
        assert all(by_id[i].total_cents() != totals_before[i] for i in touched["updated"])
        assert all(by_id[i].state == "CANCELLED" for i in touched["voided"])
        assert after["total_amount"] == after["line_amount"] + after["tax_amount"]


