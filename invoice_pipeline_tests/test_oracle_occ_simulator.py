"""The Oracle OCC simulator serves the API docs/SOURCES.md describes and the vendor's payload shapes
(fixtures/api_docs/oracle_occ_*.json)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import requests

from invoice_pipeline.simulation import Knobs
from invoice_pipeline.sources import simulator_class
from invoice_pipeline.sources.oracle_occ.simulator import SIMULATOR_CLASS

LOGIN = "/ccstore/v1/login"
REFRESH = "/ccstore/v1/refresh"
LIST = "/ccstore/v1/selfservice/invoices"
NOT_AUTHENTICATED = {"errorCode": "00001000", "message": "The user is not authenticated.", "status": "401"}
NOW = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)
AMOUNT = re.compile(r"^-?\d+(\.\d?[1-9])?$")  # Oracle style: "1250", "3326.4", "104.17"

# Field lists exactly as in the docs' examples (000 list item, 001 detail).
LIST_ITEM_KEYS = [
    "BillToCustomerName", "InvoiceBalanceAmount", "CreationDate", "TransactionType", "TransactionNumber",
    "BillingDate", "PaymentTerms", "EnteredAmount", "BillToSite", "BillToPartyId", "PayingCustomerName", "Carrier",
    "BillToContact", "DueDate", "TransactionDate", "PayingCustomerSite", "CreatedBy", "FreightAmount",
    "TransactionSource", "CustomerTransactionId", "DocumentNumber", "@context", "PurchaseOrderDate", "PurchaseOrder",
    "PayingCustomerAccount", "InvoiceStatus", "InvoiceCurrencyCode",
]
DETAIL_KEYS = [
    "BillToCustomerName", "InvoiceBalanceAmount", "CreationDate", "TransactionType", "TransactionNumber",
    "BillingDate", "PaymentTerms", "EnteredAmount", "BillToSite", "ReceiptMethod", "ShipToSite", "BillToPartyId",
    "PayingCustomerName", "links", "Carrier", "BillToContact", "DueDate", "receivablesInvoiceInstallments",
    "TransactionDate", "PayingCustomerSite", "CreatedBy", "FreightAmount", "TransactionSource",
    "receivablesInvoiceLines", "CustomerTransactionId", "DocumentNumber", "@context", "PurchaseOrderDate",
    "BusinessUnit", "PurchaseOrder", "PayingCustomerAccount", "InvoiceStatus", "LastUpdateDate", "InvoiceCurrencyCode",
]
LINE_KEYS = [
    "LineAmountIncludesTax", "AllocatedFreightAmount", "CreationDate", "TaxInvoiceDate", "Description",
    "UnitOfMeasure", "ProductType", "Quantity", "@context", "LineNumber", "receivablesInvoiceLineTaxLines",
    "ItemNumber", "CustomerTransactionLineId", "ProductCategory", "LineAmount", "AssessableValue", "SalesOrderDate",
    "MemoLine", "UnitSellingPrice", "SalesOrder",
]
TAX_KEYS = [
    "CreationDate", "TaxAmount", "TaxInclusiveIndicator", "TaxableAmount", "CustomerTransactionLineId", "Tax",
    "@context",
]
INSTALLMENT_KEYS = [
    "InstallmentFreightAmountOriginal", "AmountPaid", "InstallmentLineAmountDue", "InstallmentStatus",
    "AccountedBalanceDue", "InstallmentTaxAmountDue", "InstallmentAmountCredited", "OriginalAmount", "@context",
    "DisputeAmount", "InstallmentLineAmountOriginal", "PaymentDaysLate", "InstallmentTaxAmountOriginal",
    "InstallmentFreightAmountDue", "InstallmentAmountAdjusted", "InstallmentDueDate", "InstallmentBalanceDue",
]
COLLECTION_KEYS = ["offset", "count", "hasMore", "limit", "items"]


class Api:
    """A logged-in raw HTTP session against the simulator."""

    def __init__(self, sim):
        self.sim = sim
        self.session = requests.Session()
        self.token = self.login().json()["access_token"]

    def login(self, password: str | None = None) -> requests.Response:
        form = {"grant_type": "password", "username": self.sim.username, "password": password or self.sim.password}
        return self.session.post(self.sim.base_url + LOGIN, data=form)

    def get(self, path: str, token: str | None = None, **params) -> requests.Response:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return self.session.get(self.sim.base_url + path, params=params, headers=headers)

    def all_items(self, **params) -> list[dict]:
        items, offset = [], 0
        while True:
            body = self.get(LIST, offset=offset, **params).json()
            items += body["items"]
            if not body["hasMore"]:
                return items
            offset += body["count"]

    def total(self, q: str) -> int:
        resp = self.get(LIST, q=q, totalResults="true", limit=1)
        assert resp.status_code == 200, resp.text
        return resp.json()["totalResults"]

    def detail(self, invoice_id: str) -> dict:
        resp = self.get(f"{LIST}/{invoice_id}")
        assert resp.status_code == 200, resp.text
        return resp.json()


@pytest.fixture(scope="module")
def sim():
    with SIMULATOR_CLASS(size=150, knobs=Knobs(seed=7), now=NOW) as server:
        yield server


@pytest.fixture(scope="module")
def api(sim):
    return Api(sim)


@pytest.fixture(scope="module")
def details(sim, api):
    return [api.detail(item["CustomerTransactionId"]) for item in api.all_items()]


def dec(value: str) -> Decimal:
    return Decimal(value)


def taxes_of(line: dict) -> list[dict]:
    return line["receivablesInvoiceLineTaxLines"]["items"]


def lines_plus_tax(detail: dict) -> Decimal:
    """Sum of the LineAmount and TaxAmount values the detail shows, plus its freight (all three
    make up EnteredAmount)."""
    lines = detail["receivablesInvoiceLines"]["items"]
    freight = dec(detail.get("FreightAmount") or "0")
    return freight + sum((dec(ln["LineAmount"]) + sum(dec(t["TaxAmount"]) for t in taxes_of(ln)) for ln in lines),
                         Decimal(0))


def without_links(detail: dict) -> dict:
    return {k: v for k, v in detail.items() if k != "links"}  # the self link names the server's port


# -- auth ------------------------------------------------------------------------------------
def test_registry_and_source_config(sim):
    assert simulator_class("oracle_occ") is SIMULATOR_CLASS
    cfg = sim.source_config()
    assert cfg["type"] == "oracle_occ" and cfg["base_url"] == sim.base_url
    assert cfg["start_date"] == "2024-01-01T00:00:00Z" and cfg["username"] and cfg["password"]


def test_login_gives_bearer_with_documented_lifetime(api):
    body = api.login().json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 900 and body["access_token"]
    assert api.get(LIST, token=body["access_token"]).status_code == 200


def test_bad_credentials_and_bad_bearers_get_the_documented_401(sim, api):
    resp = api.login(password="wrong")
    assert resp.status_code == 401 and resp.json() == NOT_AUTHENTICATED
    assert api.get(LIST, token="not-a-token").json() == NOT_AUTHENTICATED
    no_header = requests.get(sim.base_url + LIST)
    assert no_header.status_code == 401 and no_header.json() == NOT_AUTHENTICATED
    assert requests.get(sim.base_url + LIST + "/1", headers={"Authorization": "Basic x"}).status_code == 401
    bad_grant = requests.post(sim.base_url + LOGIN, data={"grant_type": "client_credentials"})
    assert bad_grant.status_code == 400 and bad_grant.json()["status"] == "400"


def test_token_expires_and_refresh_issues_a_fresh_one():
    with SIMULATOR_CLASS(size=5, knobs=Knobs(token_lifetime=0.4)) as sim:
        api = Api(sim)
        assert api.login().json()["expires_in"] == 0.4
        refreshed = requests.post(sim.base_url + REFRESH, headers={"Authorization": f"Bearer {api.token}"})
        assert refreshed.status_code == 200 and refreshed.json()["token_type"] == "bearer"
        fresh = refreshed.json()["access_token"]
        assert fresh != api.token and api.get(LIST, token=fresh).status_code == 200
        time.sleep(0.5)
        expired = api.get(LIST, token=fresh)
        assert expired.status_code == 401 and expired.json() == NOT_AUTHENTICATED
        late = requests.post(sim.base_url + REFRESH, headers={"Authorization": f"Bearer {fresh}"})
        assert late.status_code == 401 and late.json() == NOT_AUTHENTICATED
        assert sim.auth_failures == 1


def test_revoked_tokens_are_rejected():
    with SIMULATOR_CLASS(size=3) as sim:
        api = Api(sim)
        sim.revoke_tokens()
        assert api.get(LIST).status_code == 401 and api.get(LIST).json() == NOT_AUTHENTICATED


# -- list ------------------------------------------------------------------------------------
def test_limit_is_capped_silently_and_echoed(api):
    default = api.get(LIST).json()
    assert default["limit"] == 25 and default["count"] == 25 and len(default["items"]) == 25
    capped = api.get(LIST, limit=100).json()
    assert capped["limit"] == 25 and capped["count"] == 25
    small = api.get(LIST, limit=10, offset=5).json()
    assert small["limit"] == 10 and small["count"] == 10 and small["offset"] == 5
    assert [i["CustomerTransactionId"] for i in small["items"]] == [
        i["CustomerTransactionId"] for i in default["items"][5:15]
    ]


def test_paging_hasmore_links_and_total_results(sim, api):
    body = api.get(LIST, limit=25, offset=0).json()
    assert list(body) == ["offset", "count", "hasMore", "limit", "links", "items"]  # no totalResults unasked
    assert [link["rel"] for link in body["links"]] == ["self", "next"]
    assert "offset=25" in body["links"][1]["href"] and "limit=25" in body["links"][1]["href"]
    with_total = api.get(LIST, totalResults="true").json()
    assert list(with_total)[0] == "totalResults" and with_total["totalResults"] == 150
    last = api.get(LIST, offset=125).json()
    assert last["count"] == 25 and last["hasMore"] is False and [lk["rel"] for lk in last["links"]] == ["self"]
    beyond = api.get(LIST, offset=400).json()
    assert beyond["items"] == [] and beyond["hasMore"] is False
    ids = [i["CustomerTransactionId"] for i in api.all_items()]
    assert len(ids) == len(set(ids)) == 150
    assert ids == sorted(ids, key=int)  # default order: CustomerTransactionId ascending


def test_list_items_have_exactly_the_documented_fields(api):
    for item in api.get(LIST).json()["items"]:
        assert list(item) == LIST_ITEM_KEYS  # and so no LastUpdateDate
        assert item["@context"]["key"] == item["CustomerTransactionId"]
        assert re.fullmatch(r"ACED0005[0-9A-F]+78", item["@context"]["headers"]["ETag"])
        assert AMOUNT.match(item["EnteredAmount"]) and AMOUNT.match(item["InvoiceBalanceAmount"])
        assert isinstance(item["TransactionNumber"], str) and isinstance(item["BillToPartyId"], str)


def test_q_filters_on_timestamps_dates_and_ids(sim, api):
    since = datetime(2024, 9, 1, tzinfo=UTC)
    n_since = sim.expected(since)["invoices"]
    assert 0 < n_since < 150
    assert api.total("LastUpdateDate>='2024-09-01T00:00:00Z'") == n_since
    assert api.total("LastUpdateDate>=2024-09-01T00:00:00+00:00") == n_since  # quotes are optional
    assert api.total("LastUpdateDate >= '2024-09-01'") == n_since  # a date means midnight UTC
    assert api.total("LastUpdateDate<'2024-09-01T00:00:00Z'") == 150 - n_since
    assert api.total("LastUpdateDate>'2024-08-31T22:00:00-02:00'") == n_since  # offsets are honoured
    upper = datetime(2025, 1, 1, tzinfo=UTC)
    window = "LastUpdateDate>='2024-09-01T00:00:00Z';LastUpdateDate<='2024-12-31T23:59:59Z'"
    assert api.total(window) == n_since - sim.expected(upper)["invoices"]
    # CustomerTransactionId compares numerically (ids are 6 digits; "99999" sorts after them as text).
    assert api.total("CustomerTransactionId>=99999") == 150
    first = api.get(LIST, limit=1).json()["items"][0]["CustomerTransactionId"]
    assert api.total(f"CustomerTransactionId='{first}'") == 1
    for item in api.all_items(q="TransactionDate>='2025-01-01';DueDate<2025-03-01"):
        assert item["TransactionDate"] >= "2025-01-01" and item["DueDate"] < "2025-03-01"
    created = api.all_items(q="CreationDate<'2024-03-01T00:00:00Z'")
    assert created and all(i["CreationDate"] < "2024-03-01" for i in created)


@pytest.mark.parametrize(
    "params",
    [
        {"q": "InvoiceStatus='Complete'"},  # not a queryable field
        {"q": "LastUpdateDate>>'2024-01-01'"},
        {"q": "LastUpdateDate>='yesterday'"},
        {"q": "LastUpdateDate>='2024-01-01"},  # unbalanced quote
        {"q": "LastUpdateDate"},
        {"q": "CustomerTransactionId>'abc'"},
        {"q": "LastUpdateDate>='2024-13-45T00:00:00Z'"},
        {"orderBy": "Foo:asc"},
        {"orderBy": "CustomerTransactionId:up"},
        {"limit": "abc"},
        {"limit": "0"},
        {"offset": "-1"},
    ],
)
def test_bad_queries_get_400_in_the_error_shape(api, params):
    resp = api.get(LIST, **params)
    assert resp.status_code == 400
    body = resp.json()
    assert set(body) == {"errorCode", "message", "status"} and body["status"] == "400" and body["message"]


def test_order_by_fields_and_directions(api):
    items = api.all_items(orderBy="TransactionDate:desc,CustomerTransactionId:asc")
    keys = [(i["TransactionDate"], -int(i["CustomerTransactionId"])) for i in items]
    assert keys == sorted(keys, reverse=True) and len(items) == 150
    created = [i["CreationDate"] for i in api.all_items(orderBy="CreationDate:asc")]
    assert created == sorted(created)


# -- detail ----------------------------------------------------------------------------------
def test_detail_has_exactly_the_documented_fields(details):
    for d in details:
        assert list(d) == DETAIL_KEYS
        assert d["links"] == [{"rel": "self", "href": d["links"][0]["href"]}]
        assert d["links"][0]["href"].endswith(f"{LIST}/{d['CustomerTransactionId']}")
        for name in ("receivablesInvoiceLines", "receivablesInvoiceInstallments"):
            assert list(d[name]) == COLLECTION_KEYS and d[name]["limit"] == 25 and d[name]["offset"] == 0
        for inst in d["receivablesInvoiceInstallments"]["items"]:
            assert list(inst) == INSTALLMENT_KEYS and isinstance(inst["PaymentDaysLate"], int)
        for line in d["receivablesInvoiceLines"]["items"]:
            assert list(line) == LINE_KEYS and list(line["receivablesInvoiceLineTaxLines"]) == COLLECTION_KEYS
            assert line["@context"]["key"] == line["CustomerTransactionLineId"]
            for tax in line["receivablesInvoiceLineTaxLines"]["items"]:
                assert list(tax) == TAX_KEYS and tax["@context"]["key"] == tax["CustomerTransactionLineId"]


def test_detail_amounts_are_oracle_strings_that_add_up(details):
    for d in details:
        lines = d["receivablesInvoiceLines"]["items"]
        insts = d["receivablesInvoiceInstallments"]["items"]
        taxes = [t for ln in lines for t in taxes_of(ln)]
        for value in [d["EnteredAmount"], d["InvoiceBalanceAmount"]] + [ln["LineAmount"] for ln in lines] + [
            t["TaxAmount"] for t in taxes
        ] + [i["OriginalAmount"] for i in insts]:
            assert isinstance(value, str) and AMOUNT.match(value), value
        entered = dec(d["EnteredAmount"])
        if not d["receivablesInvoiceLines"]["hasMore"]:
            assert entered == lines_plus_tax(d)
        assert sum(dec(i["OriginalAmount"]) for i in insts) == entered
        assert sum(dec(i["InstallmentBalanceDue"]) for i in insts) == dec(d["InvoiceBalanceAmount"])
        assert 1 <= len(insts) <= 3
        for i in insts:
            due = (dec(i["InstallmentLineAmountDue"]) + dec(i["InstallmentTaxAmountDue"])
                   + dec(i.get("InstallmentFreightAmountDue") or "0"))
            assert due == dec(i["InstallmentBalanceDue"])
        for ln in lines:
            assert 1 <= len(taxes_of(ln)) <= 2
            for t in taxes_of(ln):
                assert t["TaxableAmount"] == ln["LineAmount"]
        if d["InvoiceStatus"] == "Void":
            assert d["InvoiceBalanceAmount"] == "0"


def test_data_set_is_realistic(details):
    statuses = {d["InvoiceStatus"] for d in details}
    assert {"Complete", "Void"} <= statuses <= {"Complete", "Void", "Incomplete"}
    assert sum(d["InvoiceStatus"] == "Complete" for d in details) > 0.8 * len(details)
    assert len({d["InvoiceCurrencyCode"] for d in details}) >= 3
    assert len({d["BillToPartyId"] for d in details}) >= 5
    counts = [d["receivablesInvoiceLines"]["count"] for d in details]
    assert min(counts) >= 1 and sum(c <= 12 for c in counts) >= 0.95 * len(counts)
    assert any(d["InvoiceBalanceAmount"] == "0" for d in details) and any(
        d["InvoiceBalanceAmount"] == d["EnteredAmount"] for d in details
    )


def test_long_collections_are_cut_at_25_with_hasmore(sim, details):
    cut = [d for d in details if d["receivablesInvoiceLines"]["hasMore"]]
    assert len(cut) == sim.expected()["truncated"] >= 1
    for d in cut:
        lines = d["receivablesInvoiceLines"]
        assert lines["count"] == 25 and len(lines["items"]) == 25
        assert lines_plus_tax(d) < dec(d["EnteredAmount"])  # the header still counts the lines that did not come


def test_detail_404_and_identifier_type(api, details):
    resp = api.get(f"{LIST}/999999999")
    assert resp.status_code == 404
    assert set(resp.json()) == {"errorCode", "message", "status"} and resp.json()["status"] == "404"
    d = details[3]
    by_number = api.get(f"{LIST}/{d['TransactionNumber']}", **{"identifier-type": "TransactionNumber"})
    assert by_number.status_code == 200 and by_number.json() == d
    assert api.get(f"{LIST}/{d['CustomerTransactionId']}", **{"identifier-type": "Nope"}).status_code == 400


def test_expected_counts_what_the_api_shows(sim, details):
    exp = sim.expected()
    lines = [ln for d in details for ln in d["receivablesInvoiceLines"]["items"]]
    taxes = [t for ln in lines for t in taxes_of(ln)]
    assert exp["invoices"] == len(details) == 150
    assert exp["lines"] == len(lines) and exp["tax_lines"] == len(taxes)
    assert exp["total_amount"] == sum(dec(d["EnteredAmount"]) for d in details)
    assert exp["line_amount"] == sum(dec(ln["LineAmount"]) for ln in lines)
    assert exp["tax_amount"] == sum(dec(t["TaxAmount"]) for t in taxes)
    assert exp["balance_due"] == sum(dec(d["InvoiceBalanceAmount"]) for d in details)
    stamps = sorted(d["LastUpdateDate"] for d in details)
    assert stamps[0] >= "2024-01-02" and stamps[-1] <= (NOW - timedelta(hours=1)).isoformat()
    assert sim.expected(datetime(2024, 1, 2, tzinfo=UTC))["invoices"] == 150
    assert sim.expected(NOW - timedelta(hours=1, seconds=-1))["invoices"] == 0


# -- determinism, knobs, mutation ------------------------------------------------------------
def test_same_seed_same_data_other_seed_other_data(sim, details):
    with SIMULATOR_CLASS(size=150, knobs=Knobs(seed=7), now=NOW) as twin:
        api = Api(twin)
        for d in details[:20]:
            assert without_links(api.detail(d["CustomerTransactionId"])) == without_links(d)
        assert twin.expected() == sim.expected()
    with SIMULATOR_CLASS(size=150, knobs=Knobs(seed=8), now=NOW) as other:
        assert other.expected() != sim.expected()


def test_inconsistent_rate_breaks_that_share_of_invoices_deterministically():
    def broken(rate: float) -> set[str]:
        with SIMULATOR_CLASS(size=120, knobs=Knobs(inconsistent_rate=rate), now=NOW) as s:
            api, out = Api(s), set()
            for item in api.all_items():
                d = api.detail(item["CustomerTransactionId"])
                if not d["receivablesInvoiceLines"]["hasMore"] and lines_plus_tax(d) != dec(d["EnteredAmount"]):
                    out.add(d["CustomerTransactionId"])
            return out

    assert broken(0.0) == set()
    first = broken(0.3)
    assert 15 <= len(first) <= 60 and broken(0.3) == first


def test_mutate_changes_the_data_as_announced():
    with SIMULATOR_CLASS(size=200, now=NOW) as sim:
        api = Api(sim)
        before = {i["CustomerTransactionId"]: api.detail(i["CustomerTransactionId"]) for i in api.all_items()}
        start = datetime.now(UTC).replace(microsecond=0)
        touched = sim.mutate(updates=4, new=3, voids=2, delete_lines=2, payments=3, seed=5)
        counts = {"updated": 4, "new": 3, "voided": 2, "lines_deleted": 2, "payments": 3}
        assert {k: len(v) for k, v in touched.items()} == counts
        changed = touched["updated"] + touched["new"] + touched["voided"] + touched["lines_deleted"]
        assert len(set(changed + touched["payments"])) == 14
        assert sim.expected(start)["invoices"] == 11
        assert api.total(f"LastUpdateDate>='{start.isoformat()}'") == 11
        for invoice_id in changed:
            d = api.detail(invoice_id)
            assert d["LastUpdateDate"] >= start.isoformat()
            if not d["receivablesInvoiceLines"]["hasMore"]:
                assert dec(d["EnteredAmount"]) == lines_plus_tax(d)  # changed amounts still add up
        for invoice_id in touched["new"]:
            assert int(invoice_id) > max(map(int, before)) and api.detail(invoice_id)["InvoiceStatus"] == "Complete"
        for invoice_id in touched["updated"]:
            old, new = before[invoice_id], api.detail(invoice_id)
            assert new["EnteredAmount"] != old["EnteredAmount"]
            assert new["@context"]["headers"]["ETag"] != old["@context"]["headers"]["ETag"]
        for invoice_id in touched["voided"]:
            d = api.detail(invoice_id)
            assert d["InvoiceStatus"] == "Void" and d["InvoiceBalanceAmount"] == "0"
        for invoice_id in touched["lines_deleted"]:
            count = before[invoice_id]["receivablesInvoiceLines"]["count"]
            assert api.detail(invoice_id)["receivablesInvoiceLines"]["count"] == count - 1
        for invoice_id in touched["payments"]:  # balances drop, LastUpdateDate does not move
            old, new = before[invoice_id], api.detail(invoice_id)
            assert dec(new["InvoiceBalanceAmount"]) < dec(old["InvoiceBalanceAmount"])
            assert new["LastUpdateDate"] == old["LastUpdateDate"] and new["EnteredAmount"] == old["EnteredAmount"]
        assert sim.expected()["invoices"] == 203


