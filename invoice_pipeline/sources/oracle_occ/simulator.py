"""Local Oracle Commerce Cloud self-service invoices API (docs/SOURCES.md, "oracle_occ": list and detail).

Serves login/refresh, the capped and filterable list, and the detail whose nested collections are
cut at 25 items, over a deterministic data set. Money is kept in integer cents so every total the
tests compare with (`expected`) is exact; payloads format it the way Oracle does ("1250", "3326.4").
"""

from __future__ import annotations

import bisect
import itertools
import operator
import random
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode

from invoice_pipeline.simulation import Knobs, PageTamper, SimRequest, SimResponse, SimulatorServer
from invoice_pipeline.timeutil import parse_timestamp

API = "/ccstore/v1"
# documented variants, served by default as the vendor's documents show real tenants send them: freight on
# some invoices (invoice 891371 of the list example) and some credit memos with negative amounts.
DOCUMENTED_VARIANTS_DEFAULT = True
Q_MODES = ("honour", "refuse", "ignore")  # how the list treats its filter `q` (tenants differ)
LIST_PATH = API + "/selfservice/invoices"
CAP = 25  # list pages and every nested collection hold at most this many items
DOC_LIFETIME = 900  # seconds, the documented expires_in
SPREAD_START = datetime(2024, 1, 2, tzinfo=UTC)
NOT_AUTHENTICATED = {"errorCode": "00001000", "message": "The user is not authenticated.", "status": "401"}
# @context ETag: a Java-serialised ArrayList<Integer> whose one element is the object version number
# (the docs' example carries version 2 on invoices, 1 on lines); we vary only that number.
_ETAG_EXAMPLE = (
    "ACED0005737200136A6176612E7574696C2E41727261794C6973747881D21D99C7619D03000149000473697A657870000000"
    "01770400000001737200116A6176612E6C616E672E496E746567657212E2A0A4F781873802000149000576616C756578720010"
    "6A6176612E6C616E672E4E756D62657286AC951D0B94E08B02000078700000000278"
)
_ETAG_HEAD = _ETAG_EXAMPLE[:-10]
# currency -> (business unit, primary taxes, secondary taxes for a second tax line on some lines).
# Rates in basis points (625 = 6.25%); the self-service payload carries no rate, only amounts.
REGIMES: dict[str, tuple[str, list[tuple[str, int]], list[tuple[str, int]]]] = {
    "USD": ("Vision Operations", [("US_STATE_SALES_TAX", 625), ("FUS_STCC_TAX-UES", 2000), ("US_EXEMPT", 0)],
            [("US_COUNTY_TAX", 150), ("US_CITY_TAX", 75)]),
    "EUR": ("Vision Germany", [("DE_VAT_STANDARD", 1900), ("DE_VAT_REDUCED", 700)], [("DE_ECO_LEVY", 50)]),
    "GBP": ("Vision UK", [("GB_VAT_STANDARD", 2000), ("GB_VAT_ZERO", 0)], [("GB_CLIMATE_LEVY", 80)]),
    "CAD": ("Vision Canada", [("CA_GST", 500)], [("CA_ON_PST", 800), ("CA_BC_PST", 700)]),
    "AUD": ("Vision Australia", [("AU_GST", 1000)], [("AU_WET", 290)]),
}
CURRENCY_WEIGHTS = {"USD": 60, "EUR": 15, "GBP": 10, "CAD": 10, "AUD": 5}
# (description, unit of measure, product type, price range in whole currency units, fractional qty)
PRODUCTS = [
    ("Printer Edge Services Basic: Support fee", "YEAR", "Services", (90, 400), False),
    ("Cloud Backup 1 TB subscription", "MTH", "Services", (20, 90), False),
    ("On-site installation", "HRS", "Services", (60, 180), True),
    ("Consulting services", "HRS", "Services", (120, 260), True),
    ("Laser Printer LP-450", "Ea", "Goods", (180, 900), False),
    ("Toner Cartridge TC-45 Black", "Ea", "Goods", (35, 120), False),
    ("Network Switch 24-port", "Ea", "Goods", (150, 700), False),
    ("Office chair ergonomic", "Ea", "Goods", (90, 450), False),
    ("Copy paper A4 80g (box)", "BOX", "Goods", (12, 40), False),
]
COMPANY_A = ["Computer", "Allied", "Summit", "Pinnacle", "Harbor", "Blue Ridge", "Northwind", "Vertex", "Cedar",
             "Atlas"]
COMPANY_B = ["Service and Rentals", "Manufacturing", "Health Systems", "Logistics", "Foods", "Retail Group", "Energy"]
CITIES = ["Chattanooga", "Boston", "Denver", "Frankfurt", "Leeds", "Toronto", "Sydney", "Austin", "Lyon", "Perth"]
TERMS = {"Immediate": 0, "30 Net": 30, "45 Net": 45, "60 Net": 60}
DETAIL_KEYS = (
    "BillToCustomerName", "InvoiceBalanceAmount", "CreationDate", "TransactionType", "TransactionNumber",
    "BillingDate", "PaymentTerms", "EnteredAmount", "BillToSite", "ReceiptMethod", "ShipToSite", "BillToPartyId",
    "PayingCustomerName", "links", "Carrier", "BillToContact", "DueDate", "receivablesInvoiceInstallments",
    "TransactionDate", "PayingCustomerSite", "CreatedBy", "FreightAmount", "TransactionSource",
    "receivablesInvoiceLines", "CustomerTransactionId", "DocumentNumber", "@context", "PurchaseOrderDate",
    "BusinessUnit", "PurchaseOrder", "PayingCustomerAccount", "InvoiceStatus", "LastUpdateDate", "InvoiceCurrencyCode",
)


def amount(cents: int) -> str:
    """Oracle's number format: no trailing zeros, no decimal point for whole amounts."""
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}".rstrip("0").rstrip(".")


def ts(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def etag(version: int) -> str:
    return f"{_ETAG_HEAD}{version:08X}78"


def context(key: int, version: int) -> dict[str, Any]:
    return {"headers": {"ETag": etag(version)}, "key": str(key)}


def collection(records: list[Any], build: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """A nested collection as Oracle returns it: only the first 25 items, hasMore when cut."""
    shown = [build(r) for r in records[:CAP]]
    return {"offset": 0, "count": len(shown), "hasMore": len(records) > CAP, "limit": CAP, "items": shown}


@dataclass(slots=True)
class Customer:
    party_id: int
    name: str
    site_id: int
    site_name: str
    currency: str


@dataclass(slots=True)
class Tax:
    tax_id: int
    code: str
    rate_bp: int  # basis points; the self-service payload does not carry the rate
    taxable: int
    cents: int


@dataclass(slots=True)
class Line:
    line_id: int
    number: int
    product: tuple
    halves: int  # quantity x 2 (services are billed by the half hour)
    unit_cents: int
    item: str | None
    sales_order: str
    created: datetime
    taxes: list[Tax] = field(default_factory=list)
    cents: int = 0
    version: int = 1


@dataclass(slots=True)
class Installment:
    key: int
    due: date
    line_orig: int
    tax_orig: int
    line_due: int
    tax_due: int
    adjusted: int = 0  # negative when voided
    freight_orig: int = 0
    freight_due: int = 0


@dataclass(slots=True)
class Invoice:
    id: int
    number: str
    customer: Customer
    kind: str  # "sub" (ORA_Subscriptions) or "doo" (Distributed Order Orchestration)
    terms: str
    status: str
    created: datetime
    updated: datetime
    txn_date: date
    po: str | None
    lines: list[Line]
    n_installments: int
    delta: int = 0  # header total minus lines+tax: non-zero only for deliberately inconsistent invoices
    version: int = 1
    freight: int = 0  # cents of FreightAmount (documented variants), part of EnteredAmount
    sign: int = 1  # -1: a credit memo, every amount sent negative (kept positive internally)
    installments: list[Installment] = field(default_factory=list)

    @property
    def due_date(self) -> date:
        return self.txn_date + timedelta(days=TERMS[self.terms])

    @property
    def line_cents(self) -> int:
        return sum(ln.cents for ln in self.lines)

    @property
    def tax_cents(self) -> int:
        return sum(t.cents for ln in self.lines for t in ln.taxes)

    @property
    def entered(self) -> int:
        return self.line_cents + self.tax_cents + self.delta + self.freight

    @property
    def balance(self) -> int:
        return sum(i.line_due + i.tax_due + i.freight_due for i in self.installments)


def _midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


# Queryable / sortable fields (docs/SOURCES.md, "oracle_occ"); dates compare as midnight UTC.
FIELDS: dict[str, Callable[[Invoice], Any]] = {
    "LastUpdateDate": lambda inv: inv.updated,
    "CreationDate": lambda inv: inv.created,
    "TransactionDate": lambda inv: _midnight(inv.txn_date),
    "DueDate": lambda inv: _midnight(inv.due_date),
    "CustomerTransactionId": lambda inv: inv.id,
}
OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "=": operator.eq}
_EXPR = re.compile(r"^\s*([A-Za-z]+)\s*(>=|<=|>|<|=)\s*(.+?)\s*$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$")


class BadRequest(Exception):
    pass


def parse_q(q: str) -> tuple[tuple[str, str, Any], ...]:
    """`Field OP Value` expressions joined by ';' (AND); values are ISO dates/timestamps or ids."""
    conditions = []
    for expr in filter(None, (e.strip() for e in q.split(";"))):
        m = _EXPR.match(expr)
        if not m:
            raise BadRequest(f"Invalid query expression: {expr}")
        name, op, raw = m.groups()
        if name not in FIELDS:
            raise BadRequest(f"Attribute {name} is not queryable. Queryable: {', '.join(FIELDS)}")
        if len(raw) >= 2 and raw[0] == raw[-1] == "'":
            raw = raw[1:-1]
        elif "'" in raw:
            raw = "\0"  # unbalanced quote: rejected below
        raw = re.sub(r"(:\d{2}(?:\.\d+)?) (\d{2}:?\d{2})$", r"\1+\2", raw)  # a '+' decoded as a space
        if name == "CustomerTransactionId":
            if not raw.isdigit():
                raise BadRequest(f"Invalid value for {name}: {raw!r} (expected an integer)")
            value: Any = int(raw)
        elif _DATE.match(raw):
            value = _midnight(date.fromisoformat(raw))
        elif _TIMESTAMP.match(raw):
            try:
                value = parse_timestamp(raw)
            except ValueError:
                raise BadRequest(f"Invalid date value for {name}: {raw!r}") from None
        else:
            raise BadRequest(f"Invalid date value for {name}: {raw!r} (expected ISO-8601)")
        conditions.append((name, op, value))
    return tuple(conditions)


def parse_order(order_by: str) -> tuple[tuple[str, bool], ...]:
    """`Field:asc|desc` joined by ','; returns (field, descending) pairs."""
    keys = []
    for part in filter(None, (p.strip() for p in order_by.split(","))):
        name, _, direction = part.partition(":")
        if name not in FIELDS or direction.lower() not in ("", "asc", "desc"):
            raise BadRequest(f"Invalid orderBy: {part}")
        keys.append((name, direction.lower() == "desc"))
    return tuple(keys)


def _int_param(request: SimRequest, name: str, default: int, minimum: int) -> int:
    raw = request.param(name)
    if raw in (None, ""):
        return default
    if not raw.strip().isdigit() or int(raw) < minimum:
        raise BadRequest(f"Invalid value for {name}: {raw!r} (expected an integer >= {minimum})")
    return int(raw)


def error(status: int, code: str, message: str) -> SimResponse:
    return SimResponse(status, {"errorCode": code, "message": message, "status": str(status)})


def _ri(rng: random.Random, lo: int, hi: int) -> int:
    """rng.randint without its overhead (generation of 20,000 invoices must stay quick)."""
    return lo + int(rng.random() * (hi - lo + 1))


def _pick(rng: random.Random, items: list[Any], cum_weights: list[int]) -> Any:
    return items[bisect.bisect_right(cum_weights, rng.random() * cum_weights[-1])]


LINE_COUNTS = list(range(1, 13))
LINE_COUNT_CUM = list(itertools.accumulate([20, 16, 13, 10, 8, 7, 6, 5, 4, 4, 3, 4]))


class OracleOccSimulator(SimulatorServer):
    """The self-service invoices API over `size` generated invoices (ids ascending with creation)."""

    base_path = ""
    default_port = 8701  # where `invoice-pipeline simulate` serves it (invoice_pipeline/source_types.py)
    demo_name = "oracle_us"  # its source name in the demo and in `simulate`'s config

    def __init__(
        self, size: int = 200, knobs: Knobs | None = None, host: str = "127.0.0.1", port: int = 0,
        *, now: datetime | None = None, q_mode: str = "honour", documented_variants: bool | None = None,
        page_tamper: PageTamper | None = None,
    ):
        super().__init__(knobs, host, port)
        if q_mode not in Q_MODES:
            raise ValueError(f"q_mode must be one of {Q_MODES}, got {q_mode!r}")
        self.size = size
        self.q_mode = q_mode  # "refuse": any q answers 400; "ignore": q has no effect (tenants differ)
        self.documented_variants = DOCUMENTED_VARIANTS_DEFAULT if documented_variants is None else documented_variants
        self.page_tamper = page_tamper  # misbehaving list pages (tests of the client's paging guards)
        self.username = "integration.user@example.com"
        self.password = "Welcome1!occ"
        # `now` only pins the data set's dates (tests of determinism); mutations use the real clock.
        self.now = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        self.auth_failures = 0  # 401s answered on data endpoints (expired/unknown/missing bearer)
        self._data_lock = threading.RLock()
        self._tokens: dict[str, float] = {}  # token -> monotonic expiry
        self._rng = random.Random(self.knobs.seed)
        self._counters = {"line": 100105455400000, "tax": 1630000, "inst": 525000, "number": 10000}
        self._customers = self._make_customers(max(12, size // 20))
        self._invoices: dict[int, Invoice] = {}
        self._by_number: dict[str, int] = {}
        self._query_cache: OrderedDict[tuple, list[int]] = OrderedDict()
        self._generate(size)

    # -- data set --------------------------------------------------------------------------
    def _next_id(self, kind: str, rng: random.Random) -> int:
        self._counters[kind] += _ri(rng, 1, 9) if kind != "number" else 1
        return self._counters[kind]

    def _make_customers(self, n: int) -> list[Customer]:
        rng = random.Random(self.knobs.seed * 31 + 7)
        # Every currency has a customer; beyond those, currencies follow their weights.
        currencies = list(CURRENCY_WEIGHTS) + rng.choices(list(CURRENCY_WEIGHTS), list(CURRENCY_WEIGHTS.values()), k=n)
        return [
            Customer(1006 + i * 3, f"{COMPANY_A[i % len(COMPANY_A)]} {COMPANY_B[(i * 3 + i // 10) % len(COMPANY_B)]}"
                     + (f" {i // 70 + 1}" if i >= 70 else ""),
                     10921 + i * 17, f"{rng.choice(CITIES)} (OPS)", currencies[i])
            for i in range(n)
        ]

    def _generate(self, size: int) -> None:
        rng = self._rng
        span = int((self.now - timedelta(hours=1) - SPREAD_START).total_seconds())
        drafts = []
        for i in range(size):
            updated = SPREAD_START + timedelta(seconds=_ri(rng, 0, max(span, 0)))
            # Half were never touched after creation (updated minutes later, as in the docs' example).
            later = 0 if rng.random() < 0.5 else _ri(rng, 3600, 30 * 86400)
            created = updated - timedelta(seconds=_ri(rng, 30, 600) + later)
            drafts.append(self._draft(rng, created, updated, many=i % 100 == 37))
        drafts.sort(key=lambda inv: inv.created)
        invoice_id = 300000
        for inv in drafts:
            invoice_id += _ri(rng, 1, 4)
            self._finish(inv, invoice_id, rng, settle=True)

    def _draft(self, rng: random.Random, created: datetime, updated: datetime, many: bool = False) -> Invoice:
        customer = rng.choice(self._customers)
        kind = "sub" if rng.random() < 0.45 else "doo"
        terms = "Immediate" if kind == "sub" else rng.choice(["30 Net", "30 Net", "45 Net", "60 Net"])
        r = rng.random()
        status = "Void" if r < 0.04 else "Incomplete" if r < 0.06 else "Complete"
        inv = Invoice(
            id=0, number="", customer=customer, kind=kind, terms=terms, status=status, created=created,
            updated=updated, txn_date=created.date() - timedelta(days=rng.choice([0, 0, 0, 1, 2])),
            po=None if rng.random() < 0.6 else f"PO{_ri(rng, 1000, 99999)}", lines=[],
            n_installments=1 if terms == "Immediate" else _pick(rng, [1, 2, 3], [75, 92, 100]),
        )
        n_lines = _ri(rng, 26, 60) if many else _pick(rng, LINE_COUNTS, LINE_COUNT_CUM)
        order = f"CDRM_{_ri(rng, 10000, 99999)}" if kind == "sub" else str(_ri(rng, 100000, 999999))
        inv.lines = [self._line(rng, inv, number, order) for number in range(1, n_lines + 1)]
        return inv

    def _line(self, rng: random.Random, inv: Invoice, number: int, order: str) -> Line:
        index = int(rng.random() * len(PRODUCTS))
        description, uom, ptype, (lo, hi), fractional = PRODUCTS[index]
        if uom in ("YEAR", "MTH"):
            start = inv.txn_date
            description += f" {start.isoformat()}-{(start + timedelta(days=30)).isoformat()}"
            halves = 2 if uom == "YEAR" else 2 * _ri(rng, 1, 12)
        else:
            halves = _ri(rng, 1, 16) if fractional else 2 * _ri(rng, 1, 40)
        line = Line(
            self._next_id("line", rng), number, (description, uom, ptype), halves, _ri(rng, lo * 100, hi * 100),
            f"AS{54888 + index * 7}" if ptype == "Goods" else None, order, inv.created + timedelta(seconds=1),
        )
        self._price(line, rng, inv.customer.currency)
        return line

    def _price(self, line: Line, rng: random.Random, currency: str) -> None:
        """Line amount from quantity x price, and its 1-2 tax lines on that base (half-up cents)."""
        line.cents = (line.halves * line.unit_cents + 1) // 2  # half-up
        _, primary, secondary = REGIMES[currency]
        if not line.taxes:
            codes = [_pick(rng, primary, [70, 90, 100][: len(primary)])]
            if rng.random() < (0.6 if currency == "CAD" else 0.25):
                codes.append(rng.choice(secondary))
            line.taxes = [Tax(self._next_id("tax", rng), code, rate, 0, 0) for code, rate in codes]
        for tax in line.taxes:
            tax.taxable = line.cents
            tax.cents = (line.cents * tax.rate_bp + 5000) // 10000  # half-up

    def _finish(self, inv: Invoice, invoice_id: int, rng: random.Random, settle: bool) -> None:
        inv.id = invoice_id
        inv.number = str(self._next_id("number", rng))
        # A separate stream per invoice id: the knob changes headers only, never the rest of the data.
        ir = random.Random(self.knobs.seed * 1_000_003 + invoice_id) if self.knobs.inconsistent_rate else None
        if ir is not None and ir.random() < self.knobs.inconsistent_rate:
            base = inv.line_cents + inv.tax_cents
            inv.delta = ir.choice([1, -1]) * ir.randint(1, max(1, min(5000, base // 20)))
        if self.documented_variants:
            # Own stream per invoice id: turning documented variants on changes only these invoices.
            variants = random.Random(self.knobs.seed * 7_000_003 + invoice_id)
            if variants.random() < 0.06:
                inv.sign = -1  # a credit memo
            if inv.kind == "doo" and variants.random() < 0.3:
                inv.freight = variants.randint(5, 120) * 100 + variants.choice([0, 0, 50, 99])
        self._schedule(inv, rng, paid=0)
        if inv.status == "Void":
            self._void(inv)
        elif settle and inv.status == "Complete":
            overdue = (self.now.date() - inv.due_date).days
            full, part = (0.8, 0.9) if overdue > 45 else (0.35, 0.55) if overdue > 0 else (0.1, 0.2)
            r = rng.random()
            if r < part:
                self._pay(inv, inv.balance if r < full else inv.balance * _ri(rng, 10, 90) // 100)
        self._invoices[invoice_id] = inv
        self._by_number[inv.number] = invoice_id

    def _schedule(self, inv: Invoice, rng: random.Random, paid: int) -> None:
        """(Re)build the payment schedule for the header total, then apply what was paid already."""
        n = inv.n_installments
        keys = [i.key for i in inv.installments][:n]
        keys += [self._next_id("inst", rng) for _ in range(n - len(keys))]
        line_total, tax_total = inv.line_cents + inv.delta, inv.tax_cents
        inv.installments = []
        for k in range(n):
            lo = line_total // n if k < n - 1 else line_total - line_total // n * (n - 1)
            to = tax_total // n if k < n - 1 else tax_total - tax_total // n * (n - 1)
            fo = inv.freight if k == 0 else 0  # freight is billed with the first installment
            due = inv.due_date + timedelta(days=30 * k)
            inv.installments.append(Installment(keys[k], due, lo, to, lo, to, 0, fo, fo))
        self._pay(inv, min(paid, inv.balance))

    @staticmethod
    def _pay(inv: Invoice, cents: int) -> None:
        """Apply a receipt to the installments in due order, split between line and tax pro rata."""
        for inst in inv.installments:
            freight = min(max(cents, 0), inst.freight_due)  # freight is settled first
            inst.freight_due -= freight
            cents -= freight
            due = inst.line_due + inst.tax_due
            if cents <= 0 or due <= 0:
                continue
            pay = min(cents, due)
            tax_part = pay * inst.tax_due // due
            inst.tax_due -= tax_part
            inst.line_due -= pay - tax_part
            cents -= pay

    @staticmethod
    def _void(inv: Invoice) -> None:
        inv.status = "Void"
        for inst in inv.installments:
            inst.adjusted = -(inst.line_due + inst.tax_due + inst.freight_due)
            inst.line_due = inst.tax_due = inst.freight_due = 0

    # -- payloads (field order as in the docs' examples) --------------------------------------
    def _list_item(self, inv: Invoice) -> dict[str, Any]:
        c, doo = inv.customer, inv.kind == "doo"
        return {
            "BillToCustomerName": c.name,
            "InvoiceBalanceAmount": amount(inv.sign * inv.balance),
            "CreationDate": ts(inv.created),
            "TransactionType": "Credit Memo" if inv.sign < 0 else "Invoice" if doo else "ORA_OSS_Invoice",
            "TransactionNumber": inv.number,
            "BillingDate": None,
            "PaymentTerms": inv.terms,
            "EnteredAmount": amount(inv.sign * inv.entered),
            "BillToSite": c.site_name if doo else str(c.site_id),  # both forms occur in the docs
            "BillToPartyId": str(c.party_id),
            "PayingCustomerName": c.name if doo else None,
            "Carrier": "32512" if doo and inv.id % 3 else None,
            "BillToContact": None,
            "DueDate": inv.due_date.isoformat(),
            "TransactionDate": inv.txn_date.isoformat(),
            "PayingCustomerSite": c.site_name if doo else None,
            "CreatedBy": "AR_MGR_OPERATIONS" if inv.id % 4 == 0 else "SCMOPERATIONS",
            "FreightAmount": amount(inv.sign * inv.freight) if inv.freight else None,
            "TransactionSource": "Distributed Order Orchestration" if doo else "ORA_Subscriptions",
            "CustomerTransactionId": str(inv.id),
            "DocumentNumber": None,
            "@context": context(inv.id, inv.version),
            "PurchaseOrderDate": inv.txn_date.isoformat() if inv.po and doo else None,
            "PurchaseOrder": inv.po,
            "PayingCustomerAccount": str(c.party_id) if doo else None,
            "InvoiceStatus": inv.status,
            "InvoiceCurrencyCode": c.currency,
        }

    def _detail(self, inv: Invoice) -> dict[str, Any]:
        item = self._list_item(inv)
        doo = inv.kind == "doo"
        extra = {
            "ReceiptMethod": "ACH Receipts" if doo and inv.customer.party_id % 2 else None,
            "ShipToSite": inv.customer.site_name if doo else None,
            "links": [{"rel": "self", "href": f"{self.base_url}{LIST_PATH}/{inv.id}"}],
            "receivablesInvoiceInstallments": collection(inv.installments, lambda i: self._installment(i, inv.sign)),
            "receivablesInvoiceLines": collection(inv.lines, lambda ln: self._line_item(ln, inv)),
            "BusinessUnit": REGIMES[inv.customer.currency][0],
            "LastUpdateDate": ts(inv.updated),
        }
        item.update(extra)
        return {key: item[key] for key in DETAIL_KEYS}

    def _line_item(self, ln: Line, inv: Invoice) -> dict[str, Any]:
        description, uom, ptype = ln.product
        sign = inv.sign
        # Some tenants allocate the header freight to lines (informational: it is not in LineAmount).
        allocated = inv.freight if inv.freight and inv.id % 2 == 0 and ln is inv.lines[0] else 0
        quantity = str(ln.halves // 2) if ln.halves % 2 == 0 else f"{ln.halves // 2}.5"
        return {
            "LineAmountIncludesTax": None,
            "AllocatedFreightAmount": amount(sign * allocated) if allocated else None,
            "CreationDate": ts(ln.created),
            "TaxInvoiceDate": None,
            "Description": description,
            "UnitOfMeasure": uom,
            "ProductType": ptype,
            "Quantity": ("-" if sign < 0 else "") + quantity,  # a credit memo credits a negative quantity
            "@context": context(ln.line_id, ln.version),
            "LineNumber": str(ln.number),
            "receivablesInvoiceLineTaxLines": collection(ln.taxes, lambda t: self._tax_item(t, ln, sign)),
            "ItemNumber": ln.item,
            "CustomerTransactionLineId": str(ln.line_id),
            "ProductCategory": None,
            "LineAmount": amount(sign * ln.cents),
            "AssessableValue": None,
            "SalesOrderDate": None,
            "MemoLine": None,
            "UnitSellingPrice": amount(ln.unit_cents),
            "SalesOrder": ln.sales_order,
        }

    @staticmethod
    def _tax_item(tax: Tax, ln: Line, sign: int = 1) -> dict[str, Any]:
        return {
            "CreationDate": ts(ln.created + timedelta(seconds=52)),
            "TaxAmount": amount(sign * tax.cents),
            "TaxInclusiveIndicator": "No",
            "TaxableAmount": amount(sign * tax.taxable),
            "CustomerTransactionLineId": str(tax.tax_id),  # a tax line's own id carries the line's field name
            "Tax": tax.code,
            "@context": context(tax.tax_id, 1),
        }

    def _installment(self, inst: Installment, sign: int = 1) -> dict[str, Any]:
        original = inst.line_orig + inst.tax_orig + inst.freight_orig
        due = inst.line_due + inst.tax_due + inst.freight_due
        paid = original + inst.adjusted - due
        return {
            "InstallmentFreightAmountOriginal": amount(sign * inst.freight_orig),
            "AmountPaid": amount(sign * paid) if paid else None,
            "InstallmentLineAmountDue": amount(sign * inst.line_due),
            "InstallmentStatus": "Open" if due else "Closed",
            "AccountedBalanceDue": amount(sign * due),
            "InstallmentTaxAmountDue": amount(sign * inst.tax_due),
            "InstallmentAmountCredited": None,
            "OriginalAmount": amount(sign * original),
            "@context": context(inst.key, 2),
            "DisputeAmount": None,
            "InstallmentLineAmountOriginal": amount(sign * inst.line_orig),
            "PaymentDaysLate": (self.now.date() - inst.due).days,  # a JSON number, unlike the amounts
            "InstallmentTaxAmountOriginal": amount(sign * inst.tax_orig),
            "InstallmentFreightAmountDue": amount(sign * inst.freight_due),
            "InstallmentAmountAdjusted": amount(sign * inst.adjusted) if inst.adjusted else None,
            "InstallmentDueDate": inst.due.isoformat(),
            "InstallmentBalanceDue": amount(sign * due),
        }

    # -- HTTP ----------------------------------------------------------------------------------
    def source_config(self) -> dict[str, Any]:
        return {
            "type": "oracle_occ",
            "base_url": self.base_url,
            "username": self.username,
            "password": self.password,
            "start_date": "2024-01-01T00:00:00Z",
        }

    def handle(self, request: SimRequest) -> SimResponse:
        path = request.path.rstrip("/")
        if path in (API + "/login", API + "/refresh"):
            if request.method != "POST":
                return error(405, "00001005", f"Method {request.method} not allowed on {path}")
            return self._login(request) if path.endswith("login") else self._refresh(request)
        if path == LIST_PATH or path.startswith(LIST_PATH + "/"):
            if request.method != "GET":
                return error(405, "00001005", f"Method {request.method} not allowed on {path}")
            if self._token_expiry(request) is None:
                with self._data_lock:
                    self.auth_failures += 1
                return SimResponse(401, dict(NOT_AUTHENTICATED))
            if path == LIST_PATH:
                return self._list(request)
            return self._get(request, unquote(path[len(LIST_PATH) + 1:]))
        return error(404, "00001004", f"No resource found at {path}")

    def _issue(self) -> SimResponse:
        lifetime = self.knobs.token_lifetime if self.knobs.token_lifetime is not None else DOC_LIFETIME
        token = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9." + secrets.token_urlsafe(48)
        now = time.monotonic()
        with self._data_lock:
            if len(self._tokens) > 1000:
                self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
            self._tokens[token] = now + lifetime
        expires_in = int(lifetime) if float(lifetime).is_integer() else lifetime
        return SimResponse(200, {"access_token": token, "token_type": "bearer", "expires_in": expires_in})

    def _login(self, request: SimRequest) -> SimResponse:
        form = parse_qs(request.body.decode("utf-8", "replace"))
        value = lambda key: (form.get(key) or [""])[0]  # noqa: E731
        if value("grant_type") != "password":
            return error(400, "00001001", "Unsupported grant_type; use grant_type=password.")
        if value("username") != self.username or value("password") != self.password:
            return SimResponse(401, dict(NOT_AUTHENTICATED))
        return self._issue()

    def _refresh(self, request: SimRequest) -> SimResponse:
        # The old token stays valid until its own expiry (as a stateless bearer would).
        if self._token_expiry(request) is None:
            return SimResponse(401, dict(NOT_AUTHENTICATED))
        return self._issue()

    def _token_expiry(self, request: SimRequest) -> float | None:
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        with self._data_lock:
            expiry = self._tokens.get(token.strip())
        return expiry if expiry is not None and time.monotonic() < expiry else None

    def revoke_tokens(self) -> None:
        """Invalidate every issued token (tests: a token the server forgot, e.g. after a restart)."""
        with self._data_lock:
            self._tokens.clear()

    def _list(self, request: SimRequest) -> SimResponse:
        q = request.param("q") or ""
        if q and self.q_mode == "refuse":
            return error(400, "00001400", "Invalid query parameter: q is not supported on this resource.")
        try:
            limit = min(_int_param(request, "limit", CAP, 1), CAP)  # capped silently; the body says so
            offset = _int_param(request, "offset", 0, 0)
            conditions = () if self.q_mode == "ignore" else parse_q(q)
            ids = self._matching(conditions, parse_order(request.param("orderBy") or ""))
        except BadRequest as exc:
            return error(400, "00001400", str(exc))
        with self._lock:
            tamper = self.page_tamper.take(offset // limit) if self.page_tamper else None
        start = 0 if tamper == "ignore_offset" else offset
        page = ids[start: start + limit]
        has_more = start + len(page) < len(ids)
        if tamper == "empty":
            page, has_more = [], True
        elif tamper == "short":
            page, has_more = page[: self.page_tamper.keep], False
        with self._data_lock:
            items = [self._list_item(self._invoices[i]) for i in page]
        base = f"{self.base_url}{LIST_PATH}"
        links = [{"rel": "self", "href": base + (f"?{request.raw_query}" if request.raw_query else "")}]
        if has_more:
            query = {k: v for k, v in request.query.items() if k not in ("offset", "limit")}
            query.update(offset=[str(offset + len(page))], limit=[str(limit)])
            links.append({"rel": "next", "href": f"{base}?{urlencode(query, doseq=True)}"})
        body: dict[str, Any] = {}
        if (request.param("totalResults") or "").lower() == "true":
            body["totalResults"] = len(ids)
        body.update(offset=offset, count=len(items), hasMore=has_more, limit=limit, links=links, items=items)
        return SimResponse(200, body)

    def _matching(self, conditions: tuple, order: tuple) -> list[int]:
        """Ids matching q in orderBy order, cached per (q, orderBy) until the data changes."""
        key = (conditions, order)
        with self._data_lock:
            ids = self._query_cache.get(key)
            if ids is not None:
                self._query_cache.move_to_end(key)
                return ids
            rows = [
                inv for inv in self._invoices.values() if all(OPS[op](FIELDS[f](inv), v) for f, op, v in conditions)
            ]
            # Stable sorts, last key first; the id breaks ties so offset paging is deterministic.
            for name, descending in reversed(order + (("CustomerTransactionId", False),)):
                rows.sort(key=FIELDS[name], reverse=descending)
            ids = [inv.id for inv in rows]
            self._query_cache[key] = ids
            if len(self._query_cache) > 64:
                self._query_cache.popitem(last=False)
            return ids

    def _get(self, request: SimRequest, identifier: str) -> SimResponse:
        id_type = request.param("identifier-type") or "CustomerTransactionId"
        with self._data_lock:
            if id_type == "CustomerTransactionId":
                inv = self._invoices.get(int(identifier)) if identifier.isdigit() else None
            elif id_type == "TransactionNumber":
                inv = self._invoices.get(self._by_number.get(identifier, -1))
            else:
                return error(400, "00001400", f"Invalid identifier-type: {id_type}")
            if inv is None:
                return error(404, "00001404", f"No invoice found for {id_type} {identifier}.")
            return SimResponse(200, self._detail(inv))

    # -- truth and changes -------------------------------------------------------------------
    def invoice_ids(self) -> list[str]:
        with self._data_lock:
            return [str(i) for i in sorted(self._invoices)]

    def inconsistent_ids(self) -> set[str]:
        """Invoice ids whose header total was skewed by Knobs.inconsistent_rate (reconciliation tests)."""
        with self._lock:
            return {str(k) for k, inv in self._invoices.items() if inv.delta}

    def expected(self, since: datetime | None = None) -> dict[str, Any]:
        """Truth over invoices last updated at or after `since` (all if None), as a client sees it.

        Collections cut at 25 items count only the 25 that come back; `truncated` counts invoices
        with any such collection. Keys: invoices, lines, tax_lines, installments, truncated, void
        (counts) and total_amount, line_amount, tax_amount, balance_due (Decimal sums, signed as
        sent: credit memos negative; total_amount includes freight). expected_documents() has the
        Counts of the documented variants (kept apart: tests compare every key here with the conformed model).
        """
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        out = dict.fromkeys(("invoices", "lines", "tax_lines", "installments", "truncated", "void"), 0)
        cents = dict.fromkeys(("total_amount", "line_amount", "tax_amount", "balance_due"), 0)
        with self._data_lock:
            for inv in self._invoices.values():
                if since is not None and inv.updated < since:
                    continue
                shown = inv.lines[:CAP]
                out["invoices"] += 1
                out["lines"] += len(shown)
                out["tax_lines"] += sum(min(len(ln.taxes), CAP) for ln in shown)
                out["installments"] += min(len(inv.installments), CAP)
                out["void"] += inv.status == "Void"
                out["truncated"] += (
                    len(inv.lines) > CAP or len(inv.installments) > CAP or any(len(ln.taxes) > CAP for ln in shown)
                )
                sign = inv.sign  # amounts as sent: a credit memo's are negative
                cents["total_amount"] += sign * inv.entered
                cents["balance_due"] += sign * inv.balance
                cents["line_amount"] += sign * sum(ln.cents for ln in shown)
                cents["tax_amount"] += sign * sum(t.cents for ln in shown for t in ln.taxes[:CAP])
        return {**out, **{k: Decimal(v).scaleb(-2) for k, v in cents.items()}}

    def expected_documents(self, since: datetime | None = None) -> dict[str, Any]:
        """Truth of the documented variants over the same invoices as expected(): credit_memos (count), freight_amount (signed sum)."""
        with self._data_lock:
            chosen = [inv for inv in self._invoices.values() if since is None or inv.updated >= since]
            return {"credit_memos": sum(inv.sign < 0 for inv in chosen),
                    "freight_amount": Decimal(sum(inv.sign * inv.freight for inv in chosen)).scaleb(-2)}

    def mutate(
        self, updates: int = 0, new: int = 0, voids: int = 0, delete_lines: int = 0, payments: int = 0, seed: int = 1,
        deletes: int = 0,
    ) -> dict[str, list[str]]:
        """Change the data set between runs; returns the invoice ids touched per kind.

        updates/voids/delete_lines set LastUpdateDate to now; payments (a receipt applied to the
        installments) change balances but, as in Oracle, not the invoice's LastUpdateDate;
        deletes remove invoices outright (gone from list and detail, no change event: "deleted").
        """
        rng = random.Random(self.knobs.seed * 7919 + seed)
        now = datetime.now(UTC).replace(microsecond=0)
        touched: dict[str, list[str]] = {"updated": [], "new": [], "voided": [], "lines_deleted": [], "payments": []}
        used: set[int] = set()

        def pick(n: int, eligible: Callable[[Invoice], bool]) -> list[Invoice]:
            pool = [inv for inv in self._invoices.values() if inv.id not in used and eligible(inv)]
            chosen = rng.sample(pool, min(n, len(pool)))
            used.update(inv.id for inv in chosen)
            return chosen

        def touch(inv: Invoice, kind: str) -> None:
            inv.updated, inv.version = now, inv.version + 1
            touched[kind].append(str(inv.id))

        with self._data_lock:
            for inv in pick(updates, lambda i: i.status != "Void"):
                paid, entered = inv.entered - inv.balance, inv.entered
                for ln in rng.sample(inv.lines, min(len(inv.lines), _ri(rng, 1, 2))):
                    ln.halves = max(1, ln.halves + 2 * _ri(rng, -2, 3))
                    ln.unit_cents = max(100, ln.unit_cents * _ri(rng, 85, 120) // 100)
                    ln.version += 1
                    self._price(ln, rng, inv.customer.currency)
                while inv.entered == entered:  # an update always changes the total
                    ln = inv.lines[0]
                    ln.unit_cents += 100
                    self._price(ln, rng, inv.customer.currency)
                self._schedule(inv, rng, paid)
                touch(inv, "updated")
            for inv in pick(voids, lambda i: i.status != "Void" and i.balance == i.entered):
                self._void(inv)
                touch(inv, "voided")
            for inv in pick(delete_lines, lambda i: i.status != "Void" and len(i.lines) >= 2):
                paid = inv.entered - inv.balance
                inv.lines.remove(rng.choice(inv.lines))  # Oracle does not renumber the remaining lines
                self._schedule(inv, rng, paid)
                touch(inv, "lines_deleted")
            for inv in pick(payments, lambda i: i.status == "Complete" and i.balance > 0):
                self._pay(inv, inv.balance if rng.random() < 0.5 else max(1, inv.balance * _ri(rng, 10, 90) // 100))
                touched["payments"].append(str(inv.id))
            if deletes:
                touched["deleted"] = []
            for inv in pick(deletes, lambda i: True):
                del self._invoices[inv.id]
                self._by_number.pop(inv.number, None)
                touched["deleted"].append(str(inv.id))
            next_id = max(self._invoices, default=300000)
            for _ in range(new):
                inv = self._draft(rng, now - timedelta(seconds=_ri(rng, 30, 600)), now)
                if inv.status == "Void":
                    inv.status = "Complete"  # a brand-new invoice is not voided yet
                next_id += _ri(rng, 1, 4)
                self._finish(inv, next_id, rng, settle=False)
                touched["new"].append(str(next_id))
            self._query_cache.clear()
        return touched


SIMULATOR_CLASS = OracleOccSimulator
