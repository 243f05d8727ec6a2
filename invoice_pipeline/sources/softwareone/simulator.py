"""SoftwareOne Marketplace billing API simulator (docs/SOURCES.md, "softwareone").

Serves `GET /public/v1/billing/invoices` with the RQL subset the pipeline relies on, `select`,
`order`, limit/offset paging in a `$meta` envelope and problem-JSON errors. Invoices are shaped
field by field like the doc's example (deep seller/erpLink objects with the literal
"[Circular Reference]", four ERP addresses, 45-field lines); audit timestamps come in the formats
real tenants send (7-digit fractions with offsets, milliseconds with Z, whole seconds), and about
40% of invoices were never updated (no `audit.updated`).
"""

from __future__ import annotations

import hashlib
import operator
import random
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import unquote

from invoice_pipeline.simulation import Knobs, PageTamper, SimRequest, SimResponse, SimulatorServer
from invoice_pipeline.timeutil import parse_timestamp

PATH = "/public/v1/billing/invoices"
MAX_LIMIT = 100  # the documented cap on limit (docs/SOURCES.md) (pagination.limit echoes what was used)
DEFAULT_LIMIT = 10
FIELDS = ("id", "status", "audit.created.at", "audit.updated.at")
# Left out unless selected, then listed in $meta.omitted (erpData and price: SoftwareOne's OpenAPI).
OPTIONAL = ("audit", "lines", "erpData", "price")
# documented variants, served by default as the vendor's OpenAPI shows them: `type: "Credit"` documents sent
# with positive amounts (the conformed model negates them).
DOCUMENTED_VARIANTS_DEFAULT = True
GENERATED_DAYS = 2  # an invoice this young is still "Generated" (not yet issued)
CENT = Decimal("0.01")
FIRST = datetime(2024, 1, 2, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# id, name, currency, UTC offset (minutes) its ERP writes dates in, VAT %, country, city, street, post code, state
SELLERS = [
    ("SEL-7282-9889", "SoftwareOne Deutschland GmbH", "EUR", 60, "19", "DE", "München", "Riesstraße 20", "80992", "Bavaria"),
    ("SEL-3115-5214", "SoftwareOne, Inc.", "USD", -300, "0", "US", "Waukesha", "20875 Crossroads Circle", "53186", "WI"),
    ("SEL-6143-4417", "SoftwareOne UK Ltd", "GBP", 0, "20", "GB", "London", "110 Bishopsgate", "EC2N 4AY", "London"),
    ("SEL-9021-3390", "SoftwareOne Pty Ltd", "AUD", 600, "10", "AU", "Sydney", "60 Margaret St", "2000", "NSW"),
]
# product id, name, vendor id, vendor name, SKUs (itemNo, description, description2, unit of measure, list price)
PRODUCTS = [
    ("PRD-1111-1111", "Microsoft 365", "ACC-1001-0001", "Microsoft", [
        ("CFQ7TTC0LDPB", "Microsoft 365 Business Standard", "Includes Office apps and cloud services", "User/Month", "12.50"),
        ("CFQ7TTC0LFLZ", "Microsoft 365 E3", "Enterprise productivity and security", "User/Month", "36.00"),
        ("CFQ7TTC0LFK5", "Microsoft 365 E5", "Advanced security and analytics", "User/Month", "57.00"),
        ("CFQ7TTC0LH18", "Microsoft 365 Business Basic", "Web and mobile apps, Teams", "User/Month", "6.00")]),
    ("PRD-2222-2222", "Adobe VIP Marketplace", "ACC-1001-0002", "Adobe", [
        ("65322651CA01A12", "Creative Cloud All Apps", "Teams, annual plan", "License/Year", "1079.88"),
        ("65324918CA01A12", "Acrobat Pro", "Teams, annual plan", "License/Year", "239.88"),
        ("65304522CA01A12", "Photoshop", "Teams, annual plan", "License/Year", "455.88")]),
    ("PRD-3333-3333", "Azure Plan", "ACC-1001-0001", "Microsoft", [
        ("DZH318Z0BQ3Q", "Azure consumption", "Usage-based services", "Unit", None)]),
    ("PRD-4444-4444", "Google Workspace", "ACC-1001-0003", "Google", [
        ("GWS-BUS-STD", "Google Workspace Business Standard", "Flexible plan", "User/Month", "12.00"),
        ("GWS-BUS-PLUS", "Google Workspace Business Plus", "Flexible plan", "User/Month", "18.00")]),
]
STEMS = ["Northwind", "Contoso", "Fabrikam", "Tailspin", "Wide World", "Litware", "Adventure Works", "Proseware",
         "Woodgrove", "Lucerne", "Alpine Ski", "Blue Yonder", "Coho Vineyard", "Datum", "Fourth Coffee", "Humongous",
         "Margie's Travel", "Trey Research", "Wingtip", "Relecloud", "Graphic Design", "Southridge", "VanArsdel"]
SUFFIX = {"DE": "GmbH", "US": "Inc.", "GB": "Ltd", "AU": "Pty Ltd"}
USERS = [("USR-0000-0001", "Billing Automation"), ("USR-4821-1177", "Anna Schmidt"), ("USR-6624-9021", "James Carter")]


def _num(value: Decimal) -> int | float:
    """JSON numbers as the API writes them: 2000, 1500.75."""
    return int(value) if value == value.to_integral_value() else float(value)


def _offset(minutes: int) -> str:
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _ts7(ts: datetime, minutes: int = 0) -> str:
    """.NET style: 7-digit fraction and an offset ("2025-04-30T14:30:00.0000000+00:00")."""
    local = ts.astimezone(timezone(timedelta(minutes=minutes)))
    return f"{local:%Y-%m-%dT%H:%M:%S}.{local.microsecond:06d}0{_offset(minutes)}"


def _ts_ms(ts: datetime) -> str:
    return f"{ts.astimezone(UTC):%Y-%m-%dT%H:%M:%S}.{ts.microsecond // 1000:03d}Z"


def _scramble(prefix: str, n: int, mult: int) -> str:
    """Unique SWO-style id from a counter ("INV-123-456-789"): n -> n*mult mod 1e9 is a bijection."""
    v = (n * mult + 12345) % 10**9
    return f"{prefix}-{v // 10**6:03d}-{v // 1000 % 1000:03d}-{v % 1000:03d}"


@dataclass
class Line:
    id: str
    line_no: int
    product: int
    sku: int
    quantity: int
    unit_price: Decimal
    discount: Decimal
    vat: Decimal

    @property
    def amount(self) -> Decimal:
        return (self.unit_price * self.quantity).quantize(CENT)

    @property
    def line_amount(self) -> Decimal:
        return self.amount - self.discount

    @property
    def tax(self) -> Decimal:
        return (self.line_amount * self.vat / 100).quantize(CENT, ROUND_HALF_UP)


@dataclass
class Invoice:
    seq: int
    id: str
    buyer: int
    product: int
    created: datetime
    created_by: int
    updated: datetime | None
    updated_by: int
    style: int  # how its audit timestamps are written (0..3)
    status: str
    doc_date: date
    terms: int
    billing_type: str
    lines: list[Line]
    delta: Decimal  # header total minus (lines + tax): non-zero only for Knobs.inconsistent_rate
    paid: Decimal
    credit: bool = False  # type "Credit": a credit note, its amounts sent positive

    @property
    def net(self) -> Decimal:
        return sum((ln.line_amount for ln in self.lines), Decimal("0.00"))

    @property
    def tax(self) -> Decimal:
        return sum((ln.tax for ln in self.lines), Decimal("0.00"))

    @property
    def total(self) -> Decimal:
        return self.net + self.tax + self.delta

    @property
    def balance(self) -> Decimal:
        return Decimal("0.00") if self.status == "Cancelled" else max(self.total - self.paid, Decimal("0.00"))

    @property
    def last_modified(self) -> datetime:
        return self.updated or self.created


class DataSet:
    """The simulator's invoices, generated from a seed; rendering follows the doc's example."""

    def __init__(self, size: int, seed: int, inconsistent_rate: float, end: datetime, documented_variants: bool = False):
        self.rng = random.Random(seed)
        self.seed = seed
        self.documented_variants = documented_variants
        self.today = end.date()  # statuses (Generated / Issued / Overdue) are judged against it
        self.inconsistent_rate = inconsistent_rate
        self.version = 0
        self.line_seq = 0
        self.buyers = [self._buyer(i) for i in range(max(3, min(400, size // 25)))]
        self.invoices: list[Invoice] = []
        span = (end - FIRST).total_seconds()
        for seq in range(size):
            created = FIRST + timedelta(seconds=self.rng.uniform(0, span))
            updated = None
            if self.rng.random() < 0.6:  # the rest were never updated: no audit.updated
                updated = created + timedelta(seconds=self.rng.uniform(60, max(61.0, (end - created).total_seconds())))
                updated = min(updated, end)
            self.invoices.append(self._invoice(seq, created, updated))
        self.by_id = {inv.id: inv for inv in self.invoices}
        self.next_seq = size  # sequence of the next new invoice (ids never reused after a deletion)

    # -- generation -----------------------------------------------------------------------
    def _buyer(self, i: int) -> dict[str, Any]:
        rng = self.rng
        seller = rng.randrange(len(SELLERS))
        sid, sname, _cur, _off, _vat, country, city, street, post, state = SELLERS[seller]
        name = f"{STEMS[i % len(STEMS)]} {SUFFIX[country]}" + (f" {i // len(STEMS) + 1}" if i >= len(STEMS) else "")
        bid, link_id = f"ACC-{4000 + i:04d}-{rng.randrange(10000):04d}", f"ERPL-{7000 + i:04d}-{rng.randrange(10000):04d}"
        buyer = {"id": f"BUY-{1000 + i:04d}-{rng.randrange(10000):04d}", "icon": f"/v1/accounts/buyers/BUY-{1000 + i:04d}/icon", "name": name}
        stamp = lambda: {"at": _ts_ms(FIRST - timedelta(days=rng.randrange(30, 400), milliseconds=rng.randrange(86400000))),  # noqa: E731
                         "by": dict(zip(("id", "name", "icon"), (*USERS[0], "/v1/accounts/users/USR-0000-0001/icon")))}
        erp_link = {
            "id": link_id,
            "audit": {"created": stamp(), "updated": stamp(), "blocked": stamp(), "unblocked": stamp()},
            "$meta": {"omitted": []},
            "icon": f"/v1/accounts/erp-links/{link_id}/icon",
            "buyer": buyer,
            "seller": "[Circular Reference]",  # the API's own placeholder for the back-reference: data
            "name": f"{name} / {sname}",
            "status": "Active",
            "note": "",
            "externalIds": {"erpCompanyContact": f"{country}-CON-{100000 + i}", "erpCustomer": f"{country}-SCU-{100000 + i}",
                            "accountExternalId": f"EXT-{rng.randrange(10**6):06d}"},
            "address": {"addressLine1": f"{rng.randrange(1, 300)} {STEMS[(i + 5) % len(STEMS)]} Street", "addressLine2": "",
                        "postCode": post, "city": city, "state": state, "country": country},
        }
        contact = f"{['John', 'Maria', 'Li', 'Amir', 'Sofia'][i % 5]} {['Smith', 'Müller', 'Chen', 'Khan', 'Rossi'][i % 5 - 1]}"
        address = {"name": name, "name2": "Accounts Payable", "email": f"ap@{STEMS[i % len(STEMS)].lower().replace(' ', '').replace(chr(39), '')}.example",
                   "customerNo": f"{country}-SCU-{100000 + i}", "addressLine1": erp_link["address"]["addressLine1"],
                   "addressLine2": "", "addressLine3": "", "city": city, "postCode": post, "county": state, "country": country,
                   "contactName": contact, "contactNo": f"{country}-CON-{100000 + i}",
                   "contactEmail": f"{contact.split()[0].lower()}@example.com", "contactPhone": f"+{rng.randrange(10**10, 10**11)}"}
        return {
            "seller_idx": seller, "buyer": buyer, "markup": Decimal(rng.choice([5, 8, 10, 12, 15])),
            "seller": {"id": sid, "icon": f"/v1/accounts/sellers/{sid}/icon", "externalId": f"{country}01", "name": sname, "erpLink": erp_link},
            "client": {"id": bid, "icon": f"/v1/accounts/accounts/{bid}/icon", "type": "Client", "status": "Active", "name": name},
            "licensee": {"id": f"LCE-{2000 + i:04d}-{rng.randrange(10000):04d}", "icon": "", "name": f"{name} IT", "externalId": f"LIC-{i:05d}"},
            "addresses": {"billTo": address, "licenseTo": address, "sellTo": address, "shipTo": address},
            "products": rng.sample(range(len(PRODUCTS)), k=rng.randint(1, 2)),
            "agreement": {p: {"id": f"AGR-{3000 + i:04d}-{p:04d}", "icon": "", "status": "Active", "name": f"{PRODUCTS[p][1]} for {name}"}
                          for p in range(len(PRODUCTS))},
        }

    def _line(self, no: int, product: int, vat: Decimal) -> Line:
        rng = self.rng
        self.line_seq += 1
        skus = PRODUCTS[product][4]
        sku = rng.randrange(len(skus))
        price = skus[sku][4]
        qty, unit = (1, Decimal(rng.randrange(5000, 500000)) / 100) if price is None else (rng.randint(1, 250), Decimal(price))
        discount = (unit * qty * Decimal(rng.choice([0, 0, 0, 2, 5])) / 100).quantize(CENT)
        return Line(_scramble("INL", self.line_seq, 7919), no, product, sku, qty, unit, discount, vat)

    def _invoice(self, seq: int, created: datetime, updated: datetime | None) -> Invoice:
        rng = self.rng
        buyer_i = rng.randrange(len(self.buyers))
        b = self.buyers[buyer_i]
        product = rng.choice(b["products"])
        vat = Decimal(SELLERS[b["seller_idx"]][4]) if rng.random() < 0.9 else Decimal(0)  # some reverse charge
        style = rng.randrange(4)
        created = created.replace(microsecond=0 if style == 3 else rng.randrange(1000) * 1000)
        if updated is not None:
            updated = max(updated.replace(microsecond=0 if style == 3 else rng.randrange(1000) * 1000), created)
        local = created.astimezone(timezone(timedelta(minutes=SELLERS[b["seller_idx"]][3])))
        lines = [self._line(n + 1, product, vat) for n in range(rng.choice([1, 1, 2, 2, 3, 4, 6]))]
        delta = Decimal(0)
        if rng.random() < self.inconsistent_rate:
            delta = Decimal(rng.choice([-1, 1]) * rng.randrange(1, 5000)) / 100
        inv = Invoice(seq, _scramble("INV", seq + 1, 104729), buyer_i, product, created, rng.randrange(len(USERS)),
                      updated, rng.randrange(len(USERS)), style, "Issued", local.date(), rng.choice([14, 30, 30, 60]),
                      rng.choice(["Automated", "Automated", "Manual"]), lines, delta, Decimal(0))
        settle = rng.random()
        inv.paid = inv.total if settle < 0.5 else ((inv.total / 2).quantize(CENT) if settle < 0.6 else Decimal(0))
        if self.documented_variants:  # own stream per invoice: turning it on changes nothing else
            inv.credit = random.Random(self.seed * 7_000_003 + seq).random() < 0.08
        inv.status = self.open_status(inv)
        return inv

    def open_status(self, inv: Invoice) -> str:
        """The published status of a not-cancelled invoice (Generated, Issued, Overdue, Paid)."""
        if inv.balance == 0:
            return "Paid"
        if (self.today - inv.created.date()).days < GENERATED_DAYS:
            return "Generated"
        return "Overdue" if inv.doc_date + timedelta(days=inv.terms) < self.today else "Issued"

    # -- rendering --------------------------------------------------------------------------
    def _audit_ts(self, inv: Invoice, ts: datetime) -> str:
        if inv.style == 0:
            return _ts7(ts)
        if inv.style == 1:
            return _ts7(ts, SELLERS[self.buyers[inv.buyer]["seller_idx"]][3])
        return _ts_ms(ts) if inv.style == 2 else f"{ts.astimezone(UTC):%Y-%m-%dT%H:%M:%S}Z"

    def render(self, inv: Invoice, omitted: list[str]) -> dict[str, Any]:
        """One invoice exactly in the doc's field order; `omitted` names the parts left out."""
        b = self.buyers[inv.buyer]
        sid, _sn, currency, minutes, _vat, country, *_ = SELLERS[b["seller_idx"]]
        pid, pname, vid, vname, skus = PRODUCTS[inv.product]
        user = lambda k: {"id": USERS[k][0], "name": USERS[k][1], "icon": f"/v1/accounts/users/{USERS[k][0]}/icon"}  # noqa: E731
        v = (inv.seq + 1) * 15485863 % 10**16
        stmt = f"SOM-4021-{v // 10**12:04d}-{v // 10**8 % 10**4:04d}-{v // 10**4 % 10**4:04d}-{v % 10**4:04d}"
        doc_no = f"{country}-SIN-{100000 + inv.seq}"
        midnight = datetime.combine(inv.doc_date, datetime.min.time(), timezone(timedelta(minutes=minutes)))
        out: dict[str, Any] = {"$meta": {"omitted": omitted}, "icon": f"/v1/billing/invoices/{inv.id}/icon"}
        margin = _num((b["markup"] / (100 + b["markup"]) * 100).quantize(CENT))
        if "audit" not in omitted:
            out["audit"] = {"created": {"at": self._audit_ts(inv, inv.created), "by": user(inv.created_by)}}
            if inv.updated is not None:
                out["audit"]["updated"] = {"at": self._audit_ts(inv, inv.updated), "by": user(inv.updated_by)}
        net, tax = inv.net, inv.tax
        total = net + tax + inv.delta
        balance = Decimal("0.00") if inv.status == "Cancelled" else max(total - inv.paid, Decimal("0.00"))
        pp = (net / (1 + b["markup"] / 100)).quantize(CENT)
        out.update({
            "id": inv.id, "name": f"{inv.doc_date:%b %Y}", "buyer": b["buyer"], "seller": b["seller"],
            "status": inv.status, "type": "Credit" if inv.credit else "Debit",
            "statement": {"name": f"{b['buyer']['name']} {inv.doc_date:%b %Y}", "icon": "", "id": stmt},
            "agreement": b["agreement"][inv.product], "billingType": inv.billing_type,
            "client": b["client"], "licensee": b["licensee"],
            "product": {"id": pid, "name": pname, "externalIds": {"operations": f"OPS-{pid[4:8]}"}, "icon": f"/v1/catalog/products/{pid}/icon", "status": "Published"},
            "vendor": {"id": vid, "icon": f"/v1/accounts/accounts/{vid}/icon", "type": "Vendor", "status": "Active", "name": vname},
            "erpData": {
                "erpId": f"ERP-{10000 + inv.seq}", "documentNo": doc_no,
                "documentDate": _ts7(midnight, minutes),
                "dueDate": _ts7(midnight + timedelta(days=inv.terms, hours=23, minutes=59, seconds=59), minutes),
                "balanceDue": _num(balance), "invoiceTotal": _num(total),
                "postingDate": _ts7(midnight + timedelta(days=1, hours=10), minutes),
                "yourReference": f"Custom reference: PO-{inv.seq:06d}; Statement ID: {stmt}",
                "addresses": b["addresses"],
                "referenceNumber": {"eInvoiceNo": f"E{inv.seq:09d}", "orderNo": f"{country}-SCO-{200000 + inv.seq}",
                                    "ppqNo": f"{country}-PPQ-{300000 + inv.seq}", "quoteNo": f"{country}-QUO-{400000 + inv.seq}"},
                "payment": {"methodCode": "BANK", "termsCode": f"{inv.terms}DAYS"},
            },
            "price": {"currency": currency, "markup": _num(b["markup"]), "margin": margin,
                      "totalPP": _num(pp), "totalSP": _num(net), "totalST": _num(tax), "totalGT": _num(net + tax)},
        })
        for name in ("erpData", "price"):  # optional: only when selected
            if name in omitted:
                del out[name]
        if "lines" not in omitted:
            end = midnight + timedelta(days=30, hours=23, minutes=59, seconds=59)
            ctx = {"doc_no": doc_no, "country": country, "markup": b["markup"], "margin": margin,
                   "unix": int(inv.last_modified.timestamp()), "agreement": b["agreement"][inv.product]["id"],
                   "origin": "SystemGenerated" if inv.billing_type == "Automated" else "Manual",
                   "contact": b["addresses"]["sellTo"]["contactNo"],
                   "period": {"start": _ts7(midnight, minutes), "end": _ts7(end, minutes)}}
            out["lines"] = [self._render_line(inv, ln, ctx) for ln in inv.lines]
        return out

    def _render_line(self, inv: Invoice, ln: Line, ctx: dict[str, Any]) -> dict:
        item_no, desc, desc2, uom, list_price = PRODUCTS[ln.product][4][ln.sku]
        amount, markup = ln.amount, ctx["markup"]
        line_amount = amount - ln.discount
        tax = (line_amount * ln.vat / 100).quantize(CENT, ROUND_HALF_UP)
        cost = (ln.unit_price / (1 + markup / 100)).quantize(CENT)
        country, seq = ctx["country"], inv.seq
        return {
            "id": ln.id, "documentNo": ctx["doc_no"], "lineNo": ln.line_no, "discountAmount": _num(ln.discount),
            "vatBaseAmount": _num(line_amount), "unitOfMeasure": uom, "itemNo": item_no, "description": desc,
            "description2": desc2, "quantity": ln.quantity, "unitPrice": _num(ln.unit_price), "countryOfUsage": country,
            "contractNo": f"CONTRACT-{inv.buyer:03d}{inv.product}", "primaryCodeIdentifier": "SUBCODE-001",
            "primaryCodeVersion": "v1.0", "primaryCodeValue": f"VALUE-{ln.sku:03d}", "secondaryCodeIdentifier": "SCODE-002",
            "secondaryCodeVersion": "v2.0", "secondaryCodeValue": f"SVAL-{ln.sku:03d}",
            "msrp": _num(Decimal(list_price)) if list_price else _num(ln.unit_price), "timestamp": ctx["unix"],
            "rowVersion": f"v{seq % 7 + 1}.0", "parentItemNo": "", "type": "Consumption" if list_price is None else "Subscription",
            "responsibilityCenterCode": f"RC-{country}", "vatCalculationType": "Normal VAT" if ln.vat else "Reverse Charge VAT",
            "vatPercent": _num(ln.vat), "varPartnerNo": "", "swoPurchaseOrderNo": f"PO-{500000 + seq}",
            "varAgreementNo": ctx["agreement"], "externalPositionNo": f"POS-{ln.line_no:03d}",
            "dataOrigin": ctx["origin"], "primaryKey": f"PK-{ln.id[4:]}",
            "sellToContactNo": ctx["contact"], "externalDocumentNo": f"EXTDOC-{seq:06d}",
            "externalDocumentNo2": "", "yourReference": f"PO-{seq:06d}", "period": ctx["period"],
            "purchasePriceLcy": _num(cost), "purchasePriceTotalLcy": _num(cost * ln.quantity),
            "salesMargin": ctx["margin"], "salesMarkup": _num(markup),
            "amount": _num(amount), "lineAmount": _num(line_amount), "amountIncludingVat": _num(line_amount + tax),
        }

    # -- mutation and truth -------------------------------------------------------------------
    def mutate(self, updates: int, new: int, voids: int, delete_lines: int, seed: int, now: datetime,
               payments: int = 0, deletes: int = 0) -> dict:
        rng = random.Random(seed * 1_000_003 + self.version)
        extra: dict[str, list[str]] = {}
        if payments or deletes:
            extra = self._pay_or_delete(random.Random(seed * 7_777_777 + self.version), payments, deletes)
        live = [inv for inv in self.invoices if inv.status != "Cancelled"]
        never = [inv for inv in live if inv.updated is None]
        touched: dict[str, list[str]] = {"updated": [], "new": [], "voided": [], "lines_deleted": []}
        used: set[str] = set()

        def pick(pool: list[Invoice], n: int) -> list[Invoice]:
            pool = [inv for inv in pool if inv.id not in used]
            chosen = rng.sample(pool, min(n, len(pool)))
            used.update(inv.id for inv in chosen)
            return chosen

        # The first update goes to a never-updated invoice: its first audit.updated (issue 4).
        for inv in pick(never, min(1, updates)) + pick(live, updates - min(1, updates, len(never))):
            ln = rng.choice(inv.lines)
            ln.quantity += rng.randint(1, 5)
            touched["updated"].append(self._touch(inv, now, rng))
        for inv in pick(live, voids):
            inv.status = "Cancelled"
            touched["voided"].append(self._touch(inv, now, rng))
        for inv in pick([inv for inv in live if len(inv.lines) > 1], delete_lines):
            inv.lines.pop(rng.randrange(len(inv.lines)))
            touched["lines_deleted"].append(self._touch(inv, now, rng))
        for _ in range(new):
            inv = self._invoice(self.next_seq, now, None)
            self.next_seq += 1
            inv.created = now
            self.invoices.append(inv)
            self.by_id[inv.id] = inv
            touched["new"].append(inv.id)
        self.version += 1
        return {**touched, **extra}

    def _pay_or_delete(self, rng: random.Random, payments: int, deletes: int) -> dict[str, list[str]]:
        """Receipts that change erpData.balanceDue (and status) without an audit.updated, and
        invoices that vanish from the API without a change event; keys only when asked for."""
        out: dict[str, list[str]] = {}
        if payments:
            open_ = [inv for inv in self.invoices if inv.status != "Cancelled" and inv.balance > 0]
            out["payments"] = []
            for inv in rng.sample(open_, min(payments, len(open_))):
                inv.paid = inv.total if rng.random() < 0.5 else inv.paid + (inv.balance / 2).quantize(CENT)
                inv.status = self.open_status(inv)
                out["payments"].append(inv.id)
        if deletes:
            pool = [inv for inv in self.invoices if inv.id not in out.get("payments", [])]
            out["deleted"] = [inv.id for inv in rng.sample(pool, min(deletes, len(pool)))]
            gone = set(out["deleted"])
            self.invoices = [inv for inv in self.invoices if inv.id not in gone]
            for invoice_id in gone:
                del self.by_id[invoice_id]
        return out

    def _touch(self, inv: Invoice, now: datetime, rng: random.Random) -> str:
        inv.updated, inv.updated_by = now, rng.randrange(len(USERS))
        if inv.status != "Cancelled":
            inv.status = self.open_status(inv)
        return inv.id

    def expected(self, since: datetime | None) -> dict:
        """Truth as the conformed model shows it: a Credit document's amounts negated (the conformed signs: docs/DATA_DICTIONARY.md)."""
        chosen = [inv for inv in self.invoices if since is None or inv.last_modified >= since]
        sign = lambda inv: -1 if inv.credit else 1  # noqa: E731
        return {
            "invoices": len(chosen),
            "lines": sum(len(inv.lines) for inv in chosen),
            "tax_lines": sum(len(inv.lines) for inv in chosen),  # one derived tax line per line
            "total_amount": sum((sign(inv) * inv.total for inv in chosen), Decimal("0.00")),
            "line_amount": sum((sign(inv) * inv.net for inv in chosen), Decimal("0.00")),
            "tax_amount": sum((sign(inv) * inv.tax for inv in chosen), Decimal("0.00")),
        }


# -- RQL subset ---------------------------------------------------------------------------------
class RqlError(ValueError):
    """Malformed or unsupported query: answered 400 with problem JSON."""


_TOKEN = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|([(),])|([^(),"\s]+))')
_CMP: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq, "ne": operator.ne, "gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le}
Predicate = Callable[[Invoice], bool]


def compile_filter(text: str) -> Predicate:
    """`and(or(ge(audit.updated.at,"..."),...),lt(...))` -> predicate over simulator invoices."""
    tokens: list[tuple[str, str]] = []
    pos, text = 0, text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise RqlError(f"Invalid RQL near position {pos}: '{text[pos:pos + 20]}'.")
        pos = m.end()
        if m.group(1) is not None:
            tokens.append(("str", m.group(1)[1:-1].replace('\\"', '"')))
        elif m.group(2):
            tokens.append((m.group(2), m.group(2)))
        elif m.group(3):
            tokens.append(("word", m.group(3)))
    state = {"i": 0}

    def take(kind: str) -> str:
        i = state["i"]
        if i >= len(tokens) or tokens[i][0] != kind:
            found = tokens[i][1] if i < len(tokens) else "end of expression"
            raise RqlError(f"Invalid RQL: expected '{kind}' but found '{found}' in '{text}'.")
        state["i"] += 1
        return tokens[i][1]

    def call() -> Predicate:
        op = take("word")
        take("(")
        if op in ("and", "or"):
            parts = [call()]
            while state["i"] < len(tokens) and tokens[state["i"]][0] == ",":
                state["i"] += 1
                parts.append(call())
            take(")")
            return (lambda inv: all(p(inv) for p in parts)) if op == "and" else (lambda inv: any(p(inv) for p in parts))
        if op not in _CMP:
            raise RqlError(f"Unsupported RQL operator '{op}'.")
        field = take("word")
        take(",")
        kind = tokens[state["i"]][0] if state["i"] < len(tokens) else ""
        value = take("str" if kind == "str" else "word")
        take(")")
        return _comparison(op, field, value, kind == "str")

    predicate = call()
    if state["i"] != len(tokens):
        raise RqlError(f"Invalid RQL: unexpected '{tokens[state['i']][1]}' after the expression in '{text}'.")
    return predicate


def _comparison(op: str, field: str, value: str, quoted: bool) -> Predicate:
    cmp = _CMP[op]
    if field not in FIELDS:
        raise RqlError(f"Unsupported filter field '{field}': supported fields are {', '.join(FIELDS)}.")
    if field.startswith("audit."):
        if not quoted:
            raise RqlError(f"Timestamp values must be double-quoted: {op}({field},{value}).")
        try:
            bound = parse_timestamp(value)
        except ValueError:
            raise RqlError(f"Invalid timestamp '{value}' in {op}({field},...).") from None
        if field == "audit.created.at":
            return lambda inv: cmp(inv.created, bound)
        return lambda inv: inv.updated is not None and cmp(inv.updated, bound)
    if field == "id":
        return lambda inv: cmp(inv.id, value)
    return lambda inv: cmp(inv.status, value)


# -- server -------------------------------------------------------------------------------------
class SoftwareOneSimulator(SimulatorServer):
    base_path = ""
    default_port = 8703  # where `invoice-pipeline simulate` serves it (invoice_pipeline/source_types.py)
    demo_name = "swo"  # its source name in the demo and in `simulate`'s config

    def __init__(self, size: int = 200, knobs: Knobs | None = None, host: str = "127.0.0.1", port: int = 0,
                 *, documented_variants: bool | None = None, page_tamper: PageTamper | None = None,
                 pagination_meta: bool = True):
        super().__init__(knobs, host, port)
        self.created_at = datetime.now(UTC).replace(microsecond=0)
        variants = DOCUMENTED_VARIANTS_DEFAULT if documented_variants is None else documented_variants
        end = self.created_at - timedelta(hours=1)
        self.data = DataSet(size, self.knobs.seed, self.knobs.inconsistent_rate, end, variants)
        self.page_tamper = page_tamper  # misbehaving list pages (tests of the client's paging guards)
        self.pagination_meta = pagination_meta  # False: no $meta.pagination (a tenant that sends none)
        digest = hashlib.sha256(b"swo-simulator-token").hexdigest()  # fixed: `simulate` asks a throwaway instance
        self.token = f"idt:TKN-{int(digest[:8], 16) % 10000:04d}-{int(digest[8:16], 16) % 10000:04d}:{digest[16:56]}"
        self._auth_calls = 0  # calls seen, for the token_lifetime session drops
        self._index: OrderedDict[tuple, list[Invoice]] = OrderedDict()
        # invoice id -> responses left in which its lines are omitted although selected (<0: always)
        self.omit_lines: dict[str, int] = {}
        # the same for erpData and price (both left out of that invoice, named in its own $meta.omitted)
        self.omit_erp: dict[str, int] = {}
        self.unauthorized = 0  # 401s answered

    def source_config(self) -> dict[str, Any]:
        return {"type": "softwareone", "base_url": self.base_url, "api_token": self.token,
                "start_date": "2024-01-01T00:00:00Z"}

    def handle(self, request: SimRequest) -> SimResponse:
        if not self._authorized(request.headers.get("Authorization")):
            return _problem(401, "Unauthorized", "The API token is missing, invalid or expired.")
        if request.path.rstrip("/") != PATH:
            return _problem(404, "Not Found", f"No route matches '{request.path}'.")
        if request.method != "GET":
            return _problem(405, "Method Not Allowed", f"{request.method} is not allowed on {PATH}.")
        try:
            query = _parse_query(request.raw_query)
        except RqlError as exc:
            return _problem(400, "Bad Request", str(exc))
        with self._lock:
            rows = self._rows(query["filters"], query["order"])
            base = {n for n in OPTIONAL if n not in query["select"]}
            data, omitted = [], set(base)
            offset, limit = query["offset"], query["limit"]
            tamper = self.page_tamper.take(offset // limit) if self.page_tamper and limit else None
            start = 0 if tamper == "ignore_offset" else offset
            page = rows[start: start + limit]
            if tamper == "empty":
                page = []
            elif tamper == "short":
                page = page[: self.page_tamper.keep]
            for inv in page:
                forced = ({"lines"} if self._force_omit(inv.id) else set()) | (
                    {"erpData", "price"} if self._force_omit(inv.id, self.omit_erp) else set())
                item_omitted = sorted(base | forced)
                data.append(self.data.render(inv, item_omitted))
                omitted.update(item_omitted)
            meta: dict[str, Any] = {"omitted": sorted(omitted)}
            if self.pagination_meta:
                meta = {"pagination": {"offset": offset, "limit": limit, "total": len(rows)}, **meta}
        return SimResponse(200, {"$meta": meta, "data": data})

    def _authorized(self, header: str | None) -> bool:
        """Bearer check. Knobs.token_lifetime > 0: the platform drops the session on every N-th call
        (N = max(3, 50 x lifetime)) and the client re-applies its token; <= 0: expired. Counting calls
        rather than seconds keeps two refusals from ever hitting one call and its immediate repeat,
        however slow the machine (a wall-clock period made the tests flaky under load)."""
        ok = header == f"Bearer {self.token}"
        lifetime = self.knobs.token_lifetime
        with self._lock:
            if ok and lifetime is not None:
                if lifetime <= 0:
                    ok = False
                else:
                    self._auth_calls += 1
                    ok = self._auth_calls % max(3, round(lifetime * 50)) != 0
            self.unauthorized += not ok
        return ok

    def _force_omit(self, invoice_id: str, table: dict[str, int] | None = None) -> bool:
        table = self.omit_lines if table is None else table
        left = table.get(invoice_id, 0)
        if left > 0:
            table[invoice_id] = left - 1
        return left != 0

    def _rows(self, filters: tuple[str, ...], order: tuple[tuple[str, bool], ...]) -> list[Invoice]:
        """Filtered, ordered invoices, cached per (data version, query) so each page is O(limit)."""
        key = (self.data.version, len(self.data.invoices), filters, order)
        rows = self._index.get(key)
        if rows is None:
            preds = [compile_filter(f) for f in filters]
            rows = [inv for inv in self.data.invoices if all(p(inv) for p in preds)]
            for name, desc in reversed(order or (("id", False),)):  # stable multi-key sort
                rows.sort(key=_SORT_KEYS[name], reverse=desc)
            self._index[key] = rows
            while len(self._index) > 16:
                self._index.popitem(last=False)
        self._index.move_to_end(key)
        return rows

    def mutate(self, updates: int = 0, new: int = 0, voids: int = 0, delete_lines: int = 0, seed: int = 1,
               payments: int = 0, deletes: int = 0) -> dict:
        """Change the data set between runs; touched invoices get last-modified = now (UTC, seconds).

        payments change balances without audit.updated ("payments"); deletes make invoices vanish
        without a change event ("deleted"); those keys are returned only when asked for.
        """
        with self._lock:
            return self.data.mutate(updates, new, voids, delete_lines, seed, datetime.now(UTC).replace(microsecond=0),
                                    payments=payments, deletes=deletes)

    def expected_documents(self, since: datetime | None = None) -> dict:
        """Truth of the documented variants apart from expected() (whose every key tests compare with the conformed model)."""
        with self._lock:
            return {"credits": sum(inv.credit for inv in self.data.invoices
                                   if since is None or inv.last_modified >= since)}

    def inconsistent_ids(self) -> set[str]:
        """Invoice ids whose header total was skewed by Knobs.inconsistent_rate (reconciliation tests)."""
        return {inv.id for inv in self.data.invoices if inv.delta}

    def expected(self, since: datetime | None = None) -> dict:
        with self._lock:
            return self.data.expected(since)


_SORT_KEYS: dict[str, Callable[[Invoice], Any]] = {
    "id": lambda inv: inv.id,
    "status": lambda inv: inv.status,
    "audit.created.at": lambda inv: inv.created,
    "audit.updated.at": lambda inv: inv.updated or EPOCH,  # never updated sorts first ascending
}


def _parse_query(raw: str) -> dict[str, Any]:
    """Split the raw query into RQL calls (ANDed), select=, order=, limit=, offset=.

    Parts are percent-decoded, but '+' stays '+': it is RQL's select/order prefix, not a space.
    """
    out: dict[str, Any] = {"filters": [], "order": (), "select": set(), "limit": DEFAULT_LIMIT, "offset": 0}
    uses_audit = False
    for part in (p for p in raw.split("&") if p):
        text = unquote(part)
        key, sep, value = text.partition("=")
        if not sep or "(" in key:
            compile_filter(text)  # validates: raises RqlError
            out["filters"].append(text)
            uses_audit = uses_audit or "audit." in text
        elif key == "select":
            for token in value.split(","):
                name = token.lstrip("+-")
                if token.startswith("-"):
                    out["select"].discard(name)
                elif name:
                    out["select"].add(name)
        elif key == "order":
            fields = []
            for token in value.split(","):
                name = token[1:] if token[:1] in "+-" else token
                if name not in FIELDS:
                    raise RqlError(f"Cannot order by '{token}': supported fields are {', '.join(FIELDS)}.")
                fields.append((name, token.startswith("-")))
                uses_audit = uses_audit or name.startswith("audit.")
            out["order"] = tuple(fields)
        elif key in ("limit", "offset"):
            if not value.isdigit():
                raise RqlError(f"'{key}' must be a non-negative integer, got '{value}'.")
            out[key] = min(int(value), MAX_LIMIT) if key == "limit" else int(value)
        else:
            raise RqlError(f"Unsupported query parameter '{key}'.")
    if uses_audit and "audit" not in out["select"]:
        raise RqlError("Filtering or ordering on 'audit' requires 'audit' in select (select=audit).")
    out["filters"] = tuple(out["filters"])
    return out


def _problem(status: int, title: str, detail: str) -> SimResponse:
    """RFC 9457 problem JSON as the Marketplace API answers errors."""
    trace = f"00-{random.getrandbits(128):032x}-{random.getrandbits(64):016x}-00"
    section = {400: "15.5.1", 401: "15.5.2", 404: "15.5.5", 405: "15.5.6"}.get(status, "15.6.1")
    return SimResponse(status, {"type": f"https://tools.ietf.org/html/rfc9110#section-{section}", "title": title,
                                "status": status, "detail": detail, "traceId": trace})


SIMULATOR_CLASS = SoftwareOneSimulator
