"""CRM.COM Web API simulator (docs/SOURCES.md, "crmcom"): token login/release, AR list, invoices per AR.

Truth is kept in integer cents; payload amounts are computed as floats the way a JVM backend
sums doubles, so they carry real binary noise (82.46000000000001). Invoices are shaped field by
field like the 002_ examples; ~15% are pre-R12 records (VAT fields only, no currency_rate_period).
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from invoice_pipeline.simulation import Knobs, SimRequest, SimResponse, SimulatorServer

TIMEZONE = "Europe/Nicosia"
CAP = 500  # number_of_results cap
PAGING_MODES = ("r13", "ignored", "no_offset")
AR_STATES = ("ACTIVE", "SUSPENDED", "TERMINATED")
DEFAULT_LIFETIME = 7200.0
DATA_START = datetime(2024, 1, 2, tzinfo=UTC)
USERNAME, PASSWORD, ORGANISATION = "sim_user", "sim_password", "ACME"


def _status(code: str = "OK", message: str | None = None) -> dict[str, Any]:
    return {"message": message, "description": message, "code": code}


def _error(code: str, message: str, http_status: int = 200) -> SimResponse:
    """CRM.COM reports most errors in the body's status, with HTTP 200 (INVALID_TOKEN comes with 401)."""
    return SimResponse(http_status, {"status": _status(code, message), "data": None})


INVALID_TOKEN = ("INVALID_TOKEN", "The token is invalid or has expired", 401)


@dataclass
class _Item:
    id: str
    product: int
    qty: Decimal
    price_cents: int
    disc_pct: int
    rates: list[int]  # indexes into RATES; legacy items have exactly one (the VAT rate)

    @property
    def net_cents(self) -> int:
        return int((self.qty * self.price_cents).to_integral_value(ROUND_HALF_UP))

    @property
    def disc_cents(self) -> int:
        return int((Decimal(self.net_cents * self.disc_pct) / 100).to_integral_value(ROUND_HALF_UP))

    @property
    def line_cents(self) -> int:
        return self.net_cents - self.disc_cents

    def tax_cents(self) -> list[int]:
        return [
            int((Decimal(self.line_cents) * RATES[r][2] / 100).to_integral_value(ROUND_HALF_UP)) for r in self.rates
        ]


@dataclass
class _Invoice:
    idx: int
    id: str
    seq: int
    ar: int
    state: str
    legacy: bool
    created: datetime
    updated: datetime
    items: list[_Item]
    currency: int | None  # index into CURRENCIES, None = no currency_rate_period
    paid: str  # "full", "none", "part"
    delta_cents: int = 0  # header total minus (lines + tax): nonzero only for inconsistent invoices
    reference: str = ""
    udf: bool = False
    vat_fields: bool = True  # R17+ records leave the deprecated vat_* null
    tax_only: bool = False  # items carry their tax only in tax_amount (no applied_tax_rates, no vat_*)
    extra: dict[str, Any] = field(default_factory=dict)

    def total_cents(self) -> int:
        return sum(i.line_cents + sum(i.tax_cents()) for i in self.items) + self.delta_cents


# -- reference data and payload shapes (field by field as in invoice_pipeline_tests/fixtures/api_docs/crmcom_002_*) --
# (id, name, percentage, alternative_code, description)
RATES: list[tuple[str, str, Decimal, str, str | None]] = [
    ("B07FADC7060C61AC7B721252A6A0C5C2", "Standard", Decimal(19), "STN", "Standard VAT rate"),
    ("17C3CC33CED167090E68D6802A5E0CE0", "Reduced", Decimal(9), "RED", None),
    ("152BFE506603FFF5B71C9B45248B0637", "Low VAT Rate", Decimal(5), "LVR", None),
    ("EDE5318C0AA394902E8C7DAE0227CB01", "Zero", Decimal(0), "ZR", "No VAT applied"),
    ("4C1A0E5B9F2D48A7B3E6C0D9F1A2B3C4", "Broadcasting levy", Decimal(2), "BRL", "Levy on subscription TV"),
]
LEVY = 4
PRODUCT_TYPES = [
    {"physical_good_type": None, "service_type": "USAGE", "used_for_provisioning": True, "composition_method": "FLAT",
     "classification": "SERVICES", "name": "3Play ", "id": "92F0AFC840E91633C5212162303BE8DF",
     "description": "3Play Packages (Gold, Silver etc)", "alternative_code": "3PLAY"},
    {"physical_good_type": None, "service_type": "TERMED", "used_for_provisioning": True, "composition_method": "FLAT",
     "classification": "SERVICES", "name": "Subscription", "id": "2B0EC029035C637200648C9B2D6A2FFB",
     "description": "Subscription channels", "alternative_code": "SUBSCRIPTION"},
    {"physical_good_type": "TRACEABLE", "service_type": None, "used_for_provisioning": False, "composition_method": "FLAT",
     "classification": "PHYSICALGOODS", "name": "Devices", "id": "6E1D44A0B7C34F0E9A8B2C3D4E5F6071",
     "description": "Set-top boxes and smart cards", "alternative_code": "DEV"},
]
# (id, code, description, product type, price in cents, VAT rate, fractional quantities)
PRODUCTS = [
    ("F43EBDCE48CAADEC32CB26F59904ECCD", "Smart Card", "Smart Card", 2, 1999, 3, False),
    ("E32627E0EBB8EC74E8C4FBA0865CDF50", "Entertainment", "Entertainment", 1, 3000, 0, False),
    ("DE37CF1696E3CD4E8EF89F522019D385", "Documentaries", "Documentaries", 1, 1000, 2, False),
    ("A1B2C3D4E5F60718293A4B5C6D7E8F90", "Sports HD", "Sports HD package", 1, 2450, 0, False),
    ("0F1E2D3C4B5A69788796A5B4C3D2E1F0", "Data", "Mobile data (GB)", 0, 199, 0, True),
    ("9A8B7C6D5E4F30211203F4E5D6C7B8A9", "Calls", "Call minutes bundle", 0, 450, 1, False),
    ("1122334455667788990AABBCCDDEEFF0", "STB-4K", "4K set-top box", 2, 14900, 0, False),
    ("AABBCCDDEEFF00112233445566778899", "Install", "Installation service", 1, 4500, 1, False),
]
CURRENCIES = [
    {"suffix_symbol": None, "prefix_symbol": "£", "decimal_part_name": "pence", "code": "GBP", "integer_part_name": "pound", "id": "9"},
    {"suffix_symbol": None, "prefix_symbol": "$", "decimal_part_name": "cents", "code": "USD", "integer_part_name": "dollar", "id": "2"},
]
_UNIT = {"community_name": "Main Community", "group_name": "Main Group", "name": "Admin Unit",
         "id": "48305F8849E3C18B227C5BE3A27BA6DF", "description": "r1", "alternative_code": "MG"}
_USERS = [{"person_name": "MPAdministrator", "username": "MPAdministrator", "id": "1", "email": "mp@ministrator.com"},
          {"person_name": "Eleni Charalambous", "username": "echaralambous", "id": "17", "email": "eleni@acme.example"}]
_TYPE = {"classification": "INVOICE", "name": "Invoice 1", "id": "D75737F9C4EDF822BBC1024ADE086695",
         "description": "Invoice 1", "alternative_code": "I1"}
_CATEGORY = {"name": "Invoice Category 1", "id": "77F4DAEBBADDD57BD974CD206A791AE0",
             "description": "Invoice Category 1", "code": "IC1"}
_REJECTION = {"Id": "5F0C1B2A3D4E5F60718293A4B5C6D7E8", "name": "Wrong amounts", "alternative_code": "WA",
              "description": "Invoice amounts disputed by the customer"}
_FIRST = ["Lucia", "Andreas", "Maria", "Nikos", "Eleni", "Giorgos", "Christina", "Kyriakos", "Despina", "Marios"]
_LAST = ["Papapavlou", "Georgiou", "Christodoulou", "Ioannou", "Constantinou", "Charalambous", "Nicolaou", "Demetriou"]
_COMPANY = ["Limassol Marina Ltd", "Troodos Foods Ltd", "Aphrodite Hotels plc", "Kition Logistics Ltd", "Akamas Tech Ltd"]
_COUNTRY = [{"name": "CYPRUS", "id": "57"}, {"name": "GREECE", "id": "209"}, {"name": "UNITED KINGDOM", "id": "126"}]
_INDUSTRY = {"name": "Interior Design", "id": "06B638258885DA26FA2BD40D9128D04E"}
_SECTOR = {"name": "GOVERNMENTAL", "id": "A9BDEBD4D8FAEDB0BACE40C041156D12"}


def hex_id(r: random.Random) -> str:
    return f"{r.getrandbits(128):032X}"


def make_account(r: random.Random, i: int) -> dict[str, Any]:
    if r.random() < 0.3:
        name = f"{r.choice(_COMPANY)} #{i}"
        owner = {"last_name": None, "life_cycle_state": "FINANCIAL", "middle_name": None, "title": None, "type": "COMPANY",
                 "first_name": None, "name": name, "id": hex_id(r), "company_name": name, "demographics": None,
                 "company_profile": {"profile_year": 2023, "annual_turnover": float(r.randint(1, 90) * 100000),
                                     "established_date": f"{r.randint(1970, 2015)}-01-01T00:00:00",
                                     "number_of_employees": r.randint(3, 900), "registration_number": f"HE{r.randint(10000, 999999)}",
                                     "vat_registration_number": f"CY{r.randint(10000000, 99999999)}X", "vat_registered_by": "Tax Department",
                                     "vat_registration_date": "2010-05-01T00:00:00", "tax_reference_number": str(r.randint(10**7, 10**8)),
                                     "country_of_residence": _COUNTRY[0], "industry": _INDUSTRY, "industry_sector": _SECTOR}}
    else:
        first, last, middle = r.choice(_FIRST), r.choice(_LAST), r.choice(_FIRST)
        name = f"{first} {last}"
        country = r.choice(_COUNTRY)
        owner = {"last_name": last, "life_cycle_state": "FINANCIAL", "middle_name": middle, "company_profile": None,
                 "title": r.choice(["Mr", "Ms", "Dr"]), "type": "PERSON", "first_name": first, "name": name, "id": hex_id(r),
                 "company_name": None,
                 "demographics": {"gender": r.choice(["MALE", "FEMALE"]), "passport_issued_by_country": country,
                                  "passport_number": str(r.randint(100000, 999999)), "social_security_number": str(r.randint(100000, 999999)),
                                  "country_of_residence": _COUNTRY[0], "industry_sector": _SECTOR,
                                  "date_of_birth": {"month": r.randint(1, 12), "day": r.randint(1, 28), "year": r.randint(1940, 2004)},
                                  "name_day": {"month": r.randint(1, 12), "day": r.randint(1, 28)},
                                  "id_number": str(r.randint(100000, 999999)), "id_issued_by_country": country, "industry": _INDUSTRY}}
    state = r.choices(["ACTIVE", "SUSPENDED", "TERMINATED"], [90, 6, 4])[0]
    return {"account_owner": owner, "life_cycle_state": state, "number": str(401 + i), "name": name, "id": hex_id(r)}


def make_item(r: random.Random, legacy: bool) -> _Item:
    p = r.randrange(len(PRODUCTS))
    _, _, _, _, price, vat, fractional = PRODUCTS[p]
    qty = Decimal(r.randint(5, 400)) / 10 if fractional else Decimal(r.choice([1, 1, 1, 2, 3, 5, 12]))
    rates = [vat] if legacy or PRODUCTS[p][3] != 1 or r.random() < 0.6 else [vat, LEVY]
    return _Item(hex_id(r), p, qty, price, r.choice([0, 0, 0, 5, 10, 15]), rates)


def _rate_object(i: int) -> dict[str, Any]:
    rid, name, _, code, desc = RATES[i]
    return {"name": name, "id": rid, "description": desc, "alternative_code": code}


def item_payload(
    it: _Item, legacy: bool, vat_fields: bool, net: float, disc: float, tax: float, taxes: list[float],
    tax_only: bool = False,
) -> dict[str, Any]:
    pid, code, desc, ptype, _, _, _ = PRODUCTS[it.product]
    vat_pct = RATES[it.rates[0]][2]
    out: dict[str, Any] = {
        "vat_percentage": (int(vat_pct) if vat_fields else None), "sub_total": net - disc + tax,
        "discount_amount": disc, "vat_rate": _rate_object(it.rates[0]) if vat_fields else None,
        "discount_percentage": it.disc_pct, "net_amount": net, "id": it.id,
        "quantity": int(it.qty) if it.qty == it.qty.to_integral_value() else float(it.qty), "cost": 0,
        "vat_amount": tax if vat_fields else None,
        "product": {"product_type": PRODUCT_TYPES[ptype], "id": pid, "description": desc, "code": code, "alternative_code": None},
    }
    if not legacy:  # R12+: per-item tax amount and the applied tax rates
        out["tax_amount"] = tax
        if tax_only:  # some R12+ tenants: the amount only, no rate objects at all
            return out
        out["applied_tax_rates"] = [
            {"tax_amount": t, "tax_percentage": int(RATES[r][2]), "tax_rates": _rate_object(r)} for r, t in zip(it.rates, taxes)
        ]
    return out


def invoice_payload(
    inv: _Invoice, ar: dict[str, Any], items: list[dict[str, Any]], amounts: tuple, dates: tuple
) -> dict[str, Any]:
    f_net, f_disc, f_tax, f_total, outstanding = amounts
    created, updated, posted, due = dates
    udf = inv.udf
    log_info = {"updated_date": updated, "created_by_unit": _UNIT, "created_date": created, "updated_by_unit": _UNIT,
                "created_by_user": _USERS[0], "updated_by_user": _USERS[inv.idx % 2]}
    out: dict[str, Any] = {
        "notes": "Customer requested paper copy" if udf else None, "udf_float_1": 10 if udf else None,
        "udf_float_2": 20 if udf else None, "invoice_item_set": items, "udf_float_3": 30 if udf else None,
        "number": None if inv.state == "DRAFT" else f"I{inv.seq:08d}", "udf_float_4": 40 if udf else None,
        "due_on": due,
        **{f"udf_string_{n}": (f"udf string {n}" if udf else None) for n in range(1, 9)},
        "accounts_receivable": ar, "discount_amount": f_disc, "id": inv.id, "outstanding_amount": outstanding,
        "posted_on": posted,
        **{f"udf_date_{n}": (created if udf else None) for n in range(1, 5)},
        "vat_amount": f_tax if inv.vat_fields else None, "log_information": log_info, "issued_on": created,
        "total_amount": f_total, "life_cycle_state": inv.state, "unsettled_amount": 0,
        "rejection_reason": _REJECTION if inv.state == "REJECTED" else None, "net_amount": f_net,
        "type": _TYPE, "reference_number": inv.reference, "category": _CATEGORY,
    }
    if not inv.legacy:  # fields of later releases (R9.1-R13)
        out["tax_amount"] = f_tax
        out["back_office_code"] = None
        out["member_account"] = None
        out["accounting_period_information"] = None if posted is None else {
            "accounting_period_date": posted,
            "accounting_period": {"number": posted[:7], "name": posted[:7], "from_date": posted[:8] + "01T00:00:00",
                                  "to_date": None, "life_cycle_state": "OPEN", "closed_date": None}}
        currency = None if inv.currency is None else CURRENCIES[inv.currency]
        out["currency_rate_period"] = None if currency is None else {
            "from_date": created[:10] + "T00:00:00", "to_date": None, "rate": 0.85 if currency["code"] == "GBP" else 1.08,
            "inverse_rate": 1 / 0.85 if currency["code"] == "GBP" else 1 / 1.08, "currency": currency, "id": hex_id(random.Random(inv.id)),
        }
    return out


class CrmcomSimulator(SimulatorServer):
    base_path = "/crmapi/rest/v2"
    default_port = 8702  # where `invoice-pipeline simulate` serves it (invoice_pipeline/source_types.py)
    demo_name = "crm_eu"  # its source name in the demo and in `simulate`'s config

    def __init__(self, size: int = 200, knobs: Knobs | None = None, host: str = "127.0.0.1", port: int = 0,
                 *, page_cap: int = CAP, paging: str = "r13", empty_pages: int = 0, ar_filter_required: bool = False,
                 tax_only_items: bool = True):
        if paging not in PAGING_MODES:  # before the socket is bound
            raise ValueError(f"paging must be one of {PAGING_MODES}, not {paging!r}")
        super().__init__(knobs, host, port)
        self.page_cap, self.paging, self.empty_pages = page_cap, paging, empty_pages
        self.ar_filter_required, self.tax_only_items = ar_filter_required, tax_only_items
        self._glitched: set[tuple[int, int]] = set()  # (AR, offset) pages that answered empty once
        self.tz = ZoneInfo(TIMEZONE)
        self.created_at = datetime.now(UTC).replace(microsecond=0)
        self.lifetime = self.knobs.token_lifetime or DEFAULT_LIFETIME
        self.tokens: dict[str, float] = {}  # token -> monotonic issue time
        self.logins = 0
        self.released: list[str] = []
        self._injected: list[tuple[str, SimResponse]] = []
        rng = random.Random(self.knobs.seed)
        self.accounts = [make_account(rng, i) for i in range(max(3, size // 10 + 2))]
        self._ar_index = {(k, a[k]): i for i, a in enumerate(self.accounts) for k in ("id", "number", "name")}
        self._account_list = [{k: a[k] for k in ("id", "number", "name", "life_cycle_state")} for a in self.accounts]
        self.invoices: list[_Invoice] = []
        self.deleted: set[int] = set()  # idx of invoices removed by mutate(deletes=...)
        self._by_ar: dict[int, list[int]] = {i: [] for i in range(len(self.accounts))}
        self._cache: dict[int, bytes] = {}
        end = self.created_at - timedelta(hours=1)
        for idx in range(size):
            r = self._rng(idx)
            updated = self._unambiguous(DATA_START + (end - DATA_START) * r.random())
            self._add(self._new_invoice(idx, r, updated))

    # -- data --------------------------------------------------------------------------------
    def _rng(self, idx: int, salt: str = "") -> random.Random:
        return random.Random(f"{self.knobs.seed}:{idx}{salt}")

    def _unambiguous(self, ts: datetime) -> datetime:
        """Second precision, and not inside a DST fold, where a naive local time could mean two instants."""
        ts = ts.replace(microsecond=0)
        local = ts.astimezone(self.tz).replace(tzinfo=None)
        if local.replace(tzinfo=self.tz).astimezone(UTC) != ts:
            ts += timedelta(hours=1)
        return ts

    def _new_invoice(self, idx: int, r: random.Random, updated: datetime) -> _Invoice:
        n_ar = len(self.accounts)
        # A key account holds a quarter of all invoices (pages beyond 500); the last AR has none.
        ar = 0 if idx % 4 == 0 else 1 + min(int((n_ar - 2) * r.random() ** 1.5), n_ar - 3)
        legacy = r.random() < 0.15
        state = r.choices(["POSTED", "DRAFT", "CANCELLED", "REJECTED"], [87, 7, 4, 2])[0]
        created = min(updated, self._unambiguous(updated - timedelta(days=r.random() * 20)))
        items = [make_item(r, legacy) for _ in range(r.choices([1, 2, 3, 4], [40, 30, 20, 10])[0])]
        inv = _Invoice(
            idx=idx, id=hex_id(r), seq=idx + 1, ar=ar, state=state, legacy=legacy, created=created, updated=updated,
            items=items, currency=None if legacy or r.random() < 0.7 else r.randrange(len(CURRENCIES)),
            paid=r.choices(["full", "none", "part"], [60, 30, 10])[0], reference=str(540 + idx),
            udf=r.random() < 0.2, vat_fields=legacy or r.random() < 0.5,
        )
        if r.random() < self.knobs.inconsistent_rate:
            inv.delta_cents = r.choice([-1, 1]) * r.randint(1, 500)
        # Drawn from its own stream: the data set is the same with the knob off as before it existed.
        if self.tax_only_items and not legacy and self._rng(idx, ":tax_only").random() < 0.17:
            inv.tax_only, inv.vat_fields = True, False
            for item in items:
                item.rates = item.rates[:1]  # one tax amount per item: one tax line
        return inv

    def _add(self, inv: _Invoice) -> None:
        self.invoices.append(inv)
        self._by_ar[inv.ar].append(inv.idx)

    def _local(self, ts: datetime | None) -> str | None:
        return None if ts is None else ts.astimezone(self.tz).strftime("%Y-%m-%dT%H:%M:%S")

    def _payload(self, inv: _Invoice) -> dict[str, Any]:
        items, f_net, f_disc, f_tax, f_total = [], 0.0, 0.0, 0.0, 0.0
        for it in inv.items:
            net = float(it.qty) * (it.price_cents / 100) if it.qty == it.qty.to_integral_value() else it.net_cents / 100
            disc = it.disc_cents / 100
            taxes = [c / 100 for c in it.tax_cents()]
            tax = sum(taxes)  # float sum: noise like real doubles
            sub = net - disc + tax
            items.append(item_payload(it, inv.legacy, inv.vat_fields, net, disc, tax, taxes, inv.tax_only))
            f_net, f_disc, f_tax, f_total = f_net + net, f_disc + disc, f_tax + tax, f_total + sub
        f_total += inv.delta_cents / 100
        outstanding = {"full": 0, "none": f_total, "part": round(f_total / 3, 2)}[inv.paid]
        if inv.state in ("DRAFT", "CANCELLED", "REJECTED"):
            outstanding = 0
        posted = inv.created + timedelta(minutes=3) if inv.state in ("POSTED", "CANCELLED") else None
        return invoice_payload(
            inv, self.accounts[inv.ar], items, amounts=(f_net, f_disc, f_tax, f_total, outstanding),
            dates=(self._local(inv.created), self._local(inv.updated), self._local(posted),
                   self._local(inv.created + timedelta(days=30))),
        )

    def _bytes(self, idx: int) -> bytes:
        cached = self._cache.get(idx)
        if cached is None:
            cached = self._cache[idx] = orjson.dumps(self._payload(self.invoices[idx]))
        return cached

    # -- HTTP --------------------------------------------------------------------------------
    def inject(self, path_suffix: str, code: str, message: str = "Simulated error", http_status: int = 200) -> None:
        """Answer the next request whose path ends with path_suffix with this error status (tests)."""
        with self._lock:
            self._injected.append((path_suffix, _error(code, message, http_status)))

    def handle(self, request: SimRequest) -> SimResponse:
        path = request.path[len(self.base_path):] if request.path.startswith(self.base_path) else request.path
        with self._lock:
            for i, (suffix, response) in enumerate(self._injected):
                if path.endswith(suffix):
                    del self._injected[i]
                    return response
        if request.method == "POST" and path == "/authentication/token":
            return self._login(request)
        if request.method == "POST" and path == "/authentication/token/release":
            return self._release(request)
        if request.method != "GET" or path not in ("/accounts_receivable/list", "/invoices/list"):
            return _error("NOT_FOUND", f"No such method: {request.method} {path}", 404)
        if not self._valid(request.param("token")):
            return _error(*INVALID_TOKEN)
        try:
            limit = int(request.param("number_of_results", str(CAP)))
            offset = int(request.param("offset", "0"))
            if limit < 0 or offset < 0:
                raise ValueError
        except ValueError:
            return _error("INVALID_PARAMETER", "number_of_results and offset must be integers >= 0")
        if path == "/accounts_receivable/list":
            return self._ar_list(request, limit, offset)
        return self._invoice_list(request, limit, offset)

    def _slice(self, rows: list[Any], limit: int, offset: int) -> list[Any]:
        """One page as this server's release and tenant cut it (see the module docstring)."""
        if self.paging == "ignored":
            return rows
        if self.paging == "no_offset":
            offset = 0
        return rows[offset:offset + min(limit, CAP, self.page_cap)]

    def _ar_list(self, request: SimRequest, limit: int, offset: int) -> SimResponse:
        state = request.param("life_cycle_state")
        if state is None and self.ar_filter_required:
            return _error("MISSING_PARAMETER", "It is mandatory to specify one of the semi-optional parameters")
        if state is not None and state not in AR_STATES:
            return _error("INVALID_PARAMETER", f"life_cycle_state must be one of {', '.join(AR_STATES)}")
        rows = [a for a in self._account_list if state is None or a["life_cycle_state"] == state]
        return SimResponse(200, {"status": _status(), "data": self._slice(rows, limit, offset)})

    def _login(self, request: SimRequest) -> SimResponse:
        body = request.json() or {}
        if (body.get("username"), body.get("password"), body.get("organisation")) != (USERNAME, PASSWORD, ORGANISATION):
            return _error("AUTHENTICATION_FAILED", "Invalid username, password or organisation")
        token = uuid.uuid4().hex.upper()
        with self._lock:
            self.tokens[token] = time.monotonic()
            self.logins += 1
        return SimResponse(200, {"status": _status(), "data": {"token": token}})

    def _release(self, request: SimRequest) -> SimResponse:
        token = (request.json() or {}).get("token")
        with self._lock:
            if not self._valid(token):
                return _error(*INVALID_TOKEN)
            del self.tokens[token]
            self.released.append(token)
        return SimResponse(200, {"status": _status(), "data": None})

    def _valid(self, token: str | None) -> bool:
        with self._lock:
            issued = self.tokens.get(token or "")
            return issued is not None and time.monotonic() - issued < self.lifetime

    def _invoice_list(self, request: SimRequest, limit: int, offset: int) -> SimResponse:
        idents = request.query.get("accounts_receivable_identifier", [])
        if len(idents) != 1 or "=" not in idents[0]:
            return _error("MISSING_PARAMETER", "Exactly one accounts_receivable_identifier is required")
        key, _, value = idents[0].partition("=")
        ar = self._ar_index.get((key, value))
        if ar is None:
            return _error("INVALID_PARAMETER", f"Accounts receivable not found: {idents[0]}")
        fields = [f for f in (request.param("fields_set") or "").split(",") if f]
        with self._lock:
            page = self._slice(self._by_ar[ar], limit, offset)
            if page and offset > 0 and self.empty_pages > 0 and (ar, offset) not in self._glitched:
                self.empty_pages -= 1  # a glitch mid-listing: this page answers empty once
                self._glitched.add((ar, offset))
                page = []
            if fields:
                data = orjson.dumps([{k: v for k, v in self._payload(self.invoices[i]).items() if k in fields} for i in page])
            else:
                data = b"[" + b",".join(self._bytes(i) for i in page) + b"]"
        return SimResponse(200, b'{"status":' + orjson.dumps(_status()) + b',"data":' + data + b"}")

    # -- test helpers ---------------------------------------------------------------------
    def source_config(self) -> dict[str, Any]:
        return {
            "type": "crmcom", "base_url": self.base_url, "username": USERNAME, "password": PASSWORD,
            "organisation": ORGANISATION, "timezone": TIMEZONE, "currency": "EUR", "start_date": "2024-01-01T00:00:00Z",
        }

    def mutate(
        self, updates: int = 0, new: int = 0, voids: int = 0, delete_lines: int = 0, seed: int = 1,
        payments: int = 0, deletes: int = 0,
    ) -> dict[str, list[str]]:
        """Change the data set between runs; every touched invoice gets last-modified = now.

        payments: receipts change outstanding_amount but not log_information.updated_date (keys
        "payments"); deletes: invoices vanish from invoices/list without any change event ("deleted").
        Those two keys are returned only when asked for.
        """
        r = random.Random(f"{self.knobs.seed}:mutate:{seed}")
        now = datetime.now(UTC).replace(microsecond=0)
        touched: dict[str, list[str]] = {"updated": [], "new": [], "voided": [], "lines_deleted": []}
        with self._lock:
            if payments or deletes:
                self._pay_or_delete(r, payments, deletes, touched)
            pool = [inv for inv in self.invoices if inv.state != "CANCELLED" and inv.idx not in self.deleted]
            r.shuffle(pool)
            for inv in [i for i in pool if i.state != "DRAFT"][:updates]:
                inv.items[0].qty += 1  # amounts change and still add up
                touched["updated"].append(inv.id)
            rest = [i for i in pool if i.id not in touched["updated"]]
            for inv in [i for i in rest if i.state == "POSTED"][:voids]:
                inv.state = "CANCELLED"
                touched["voided"].append(inv.id)
            rest = [i for i in rest if i.id not in touched["voided"]]
            for inv in [i for i in rest if len(i.items) >= 2][:delete_lines]:
                inv.items.pop()
                touched["lines_deleted"].append(inv.id)
            for inv in self.invoices:
                if inv.id in touched["updated"] or inv.id in touched["voided"] or inv.id in touched["lines_deleted"]:
                    inv.updated = now
                    self._cache.pop(inv.idx, None)
            for _ in range(new):
                idx = len(self.invoices)
                inv = self._new_invoice(idx, self._rng(idx, f":new{seed}"), now)
                inv.created = now
                self._add(inv)
                touched["new"].append(inv.id)
        return touched

    def _pay_or_delete(self, r: random.Random, payments: int, deletes: int, touched: dict[str, list[str]]) -> None:
        """Payments without a change event (as receipts applied in the back office) and silent deletions."""
        live = [inv for inv in self.invoices if inv.idx not in self.deleted]
        unpaid = [inv for inv in live if inv.state == "POSTED" and inv.paid != "full"]
        r.shuffle(unpaid)
        touched["payments"] = []
        for inv in unpaid[:payments]:
            inv.paid = "full" if inv.paid == "part" or r.random() < 0.5 else "part"
            self._cache.pop(inv.idx, None)
            touched["payments"].append(inv.id)
        if deletes:
            touched["deleted"] = []
            rest = [inv for inv in live if inv.id not in touched["payments"]]
            r.shuffle(rest)
            for inv in rest[:deletes]:
                self.deleted.add(inv.idx)
                self._by_ar[inv.ar].remove(inv.idx)
                touched["deleted"].append(inv.id)
        if not payments:
            del touched["payments"]

    def inconsistent_ids(self) -> set[str]:
        """Invoice ids whose header total was skewed by Knobs.inconsistent_rate (reconciliation tests)."""
        return {inv.id for inv in self.invoices if inv.delta_cents}

    def expected(self, since: datetime | None = None) -> dict[str, Any]:
        """Truth from the simulator's own cents (not through the client's mapping)."""
        out: dict[str, Any] = {"invoices": 0, "lines": 0, "tax_lines": 0}
        total = lines = tax = 0
        with self._lock:
            for inv in self.invoices:
                if (since is not None and inv.updated < since) or inv.idx in self.deleted:
                    continue
                out["invoices"] += 1
                out["lines"] += len(inv.items)
                for it in inv.items:
                    out["tax_lines"] += len(it.rates)
                    lines += it.line_cents
                    tax += sum(it.tax_cents())
                total += inv.total_cents()
        cents = Decimal("0.01")
        out.update(total_amount=total * cents, line_amount=lines * cents, tax_amount=tax * cents)
        return out


SIMULATOR_CLASS = CrmcomSimulator
