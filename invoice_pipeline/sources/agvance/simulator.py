"""Agvance Web API simulator (docs/SOURCES.md, "agvance") with a deterministic ag-retailer data set.

Several locations number their invoices independently (numbers overlap), bulk updates give many
invoices the same LastModifiedUtc second, and five tenant-specific child arrays carry awkward
column names. Amounts are Decimals and become JSON numbers only when a record is rendered, so
expected() sums exact values.
"""

from __future__ import annotations

import bisect
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import orjson

from invoice_pipeline.simulation import Knobs, SimRequest, SimResponse, SimulatorServer

CENT = Decimal("0.01")
LOCATIONS = ["001", "002", "005", "010"]  # each location numbers its invoices from 100001
TERMS = [("Net 30", 30), ("Net 10", 10), ("Due on Receipt", 0), ("Net 60", 60), ("10th Prox", 25)]
# ProductID, ProductName, UnitOfMeasure, unit price range, taxable (ag inputs are mostly exempt)
PRODUCTS = [
    ("UREA46", "Urea 46-0-0", "TON", (480, 720), False),
    ("DAP1846", "DAP 18-46-0", "TON", (590, 860), False),
    ("POT060", "Potash 0-0-60", "TON", (390, 560), False),
    ("UAN28", "UAN 28% Solution", "GAL", (1.15, 1.95), False),
    ("RUPMAX", "Roundup PowerMAX 3", "GAL", (38.5, 52.75), True),
    ("ATRZ4L", "Atrazine 4L", "GAL", (14.2, 21.9), True),
    ("SEEDCN", "Seed Corn DKC62-70 RIB", "BAG", (255, 335), False),
    ("SEEDSB", "Soybean Seed AG36XF2", "UNIT", (52, 71), False),
    ("APPL-AIR", "Custom Application - Aerial", "ACRE", (11.5, 16), True),
    ("APPL-GND", "Custom Application - Ground", "ACRE", (6.75, 9.5), True),
    ("LP-GAS", "Propane (LP)", "GAL", (1.389, 2.249), True),
    ("DSL-OR", "Diesel #2 Off-Road Dyed", "GAL", (2.999, 4.159), False),
    ("SOILTST", "Grid Soil Sampling 2.5ac", "ACRE", (7, 9), True),
]
TAX_CODES = [("IL-ST", "Illinois State Sales Tax", Decimal("6.25")), ("CNTY", "County Sales Tax", Decimal("1.00")),
             ("RTA", "Regional Transit Tax", Decimal("0.75"))]
FARM_WORDS = ["Oak Ridge", "Prairie View", "Miller", "Schmidt", "Hernández", "O'Brien & Sons", "Twin Creek",
              "Van der Berg", "Sunrise", "Kowalczyk", "Lone Elm", "Rüdiger", "Blackhawk", "Cedar Bend"]
FARM_KINDS = ["Farms LLC", "Grain Co.", "Family Farms", "Ag Partners", "Land & Cattle", "Farms Inc."]
# Tenant-specific child tables: column names are data and are deliberately awkward (spaces,
# quotes, semicolons, non-ASCII, names equal but for case, one very long name).
LONG_COLUMN = ("Restricted Entry Interval (REI) in hours as printed on the product label for this "
               "application event, per state pesticide regulation section 12.4(b)")
TENANT_COLUMNS = {
    "InvoiceBooksDetails": ["Book ID", "Contract #", 'Booked "Price"', "Qty Applied", "Rate", "rate", "Größe"],
    "InvoiceBlendsDetails": ["Blend Name", "Analysis;N-P-K", "Lbs/Acre", "Acres", "Größe", "Mixer Operator's Initials"],
    "InvoiceDelivsDetails": ["Ticket No", "Delivered On", "Truck/Trailer", "Driver's Name", "Net Wt",
                             "Destination; Field"],
    "InvoiceEnergyDetails": ["Tank Serial #", "Fuel Type", "Gallons", "Température °F", "Meter Start", "Meter End"],
    "InvoiceApplicatorDetails": ["Applicator License", "Applicator Name", "EPA Reg. No.", "Wind Speed (mph)",
                                 "Temp", "temp", LONG_COLUMN],
}


def money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def num(value: Decimal) -> float | int:
    """A Decimal as the JSON number the API sends (repr of the float round-trips exactly)."""
    return int(value) if value == value.to_integral_value() else float(value)


@dataclass
class Line:
    number: int
    product: tuple[Any, ...]
    quantity: Decimal
    price: Decimal

    @property
    def extension(self) -> Decimal:
        return money(self.quantity * self.price)


@dataclass
class Inv:
    location: str
    number: str
    invoice_date: date
    guid: str
    customer: tuple[str, str]
    terms: tuple[str, int]
    lines: list[Line]
    taxes: dict[int, list[tuple[str, str, Decimal]]]  # LineNumber -> tax codes on it
    splits: list[tuple[tuple[str, str], Decimal]]
    tenant: dict[str, list[dict[str, Any]]]
    modified: datetime
    paid_share: Decimal  # share of the total paid: 0, partial or 1
    skew: Decimal = Decimal(0)  # inconsistent_rate: header total off by this
    void: bool = False
    _cache: bytes | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return f"{self.location}-{self.number}"

    def tax_rows(self) -> list[tuple[int, str, str, Decimal, Decimal, Decimal]]:
        rows = []
        for line in self.lines:
            for code, desc, rate in self.taxes.get(line.number, []):
                rows.append((line.number, code, desc, rate, line.extension, money(line.extension * rate / 100)))
        return rows

    def amounts(self) -> tuple[Decimal, Decimal, Decimal, Decimal, Decimal]:
        """SubTotal, TaxTotal, InvoiceTotal (with skew), AmountPaid, BalanceDue."""
        sub = sum((ln.extension for ln in self.lines), Decimal("0.00"))
        tax = sum((t[5] for t in self.tax_rows()), Decimal("0.00"))
        total = sub + tax + self.skew
        paid = Decimal("0.00") if self.void else money(total * self.paid_share)
        return sub, tax, total, paid, (Decimal("0.00") if self.void else total - paid)

    def touch(self, when: datetime) -> None:
        self.modified = when
        self._cache = None

    def payload(self) -> dict[str, Any]:
        """Field by field as in the 004 doc's example record."""
        sub, tax, total, paid, balance = self.amounts()
        due = self.invoice_date + timedelta(days=self.terms[1])
        return {
            "InvoiceDate": self.invoice_date.strftime("%m/%d/%Y"),
            "InvoiceLocation": self.location,
            "InvoiceNumber": self.number,
            "InvoiceRecordHeaderDetails": {
                "InvoiceGuid": self.guid,
                "CustomerID": self.customer[0],
                "CustomerName": self.customer[1],
                "InvoiceTotal": num(total),
                "SubTotal": num(sub),
                "TaxTotal": num(tax),
                "AmountPaid": num(paid),
                "BalanceDue": num(balance),
                "DueDate": due.strftime("%m/%d/%Y"),
                "Terms": self.terms[0],
                "Void": self.void,
                "LastModifiedUtc": self.modified.strftime("%Y-%m-%dT%H:%M:%S"),
            },
            "InvoiceRecordSplitDetails": [
                {"CustomerID": c[0], "CustomerName": c[1], "SplitPercent": num(pct), "Amount": num(amt)}
                for (c, pct), amt in zip(self.splits, _split_amounts(total, [p for _, p in self.splits]), strict=True)
            ],
            "InvoiceRecordLineItemDetails": [
                {"LineNumber": ln.number, "ProductID": ln.product[0], "ProductName": ln.product[1],
                 "Quantity": num(ln.quantity), "UnitOfMeasure": ln.product[2], "UnitPrice": num(ln.price),
                 "Extension": num(ln.extension)}
                for ln in self.lines
            ],
            "InvoiceTaxCodeDetails": [
                {"LineNumber": n, "TaxCode": code, "Description": desc, "TaxRate": num(rate),
                 "TaxableAmount": num(base), "TaxAmount": num(amount)}
                for n, code, desc, rate, base, amount in self.tax_rows()
            ],
            **{name: rows for name, rows in self.tenant.items()},
        }

    def rendered(self) -> bytes:
        if self._cache is None:
            self._cache = orjson.dumps(self.payload())
        return self._cache


def _split_amounts(total: Decimal, shares: list[Decimal]) -> list[Decimal]:
    """Split amounts that add up to the total exactly (the last share takes the rounding)."""
    if not shares:
        return []
    parts = [money(total * s / 100) for s in shares[:-1]]
    return parts + [total - sum(parts, Decimal(0))]


def _decimal(rng: random.Random, lo: float, hi: float, places: int) -> Decimal:
    return Decimal(f"{rng.uniform(lo, hi):.{places}f}")


def customers(rng: random.Random, count: int) -> list[tuple[str, str]]:
    return [(f"F{10000 + i * 7}", f"{rng.choice(FARM_WORDS)} {rng.choice(FARM_KINDS)}") for i in range(count)]


def tenant_rows(rng: random.Random, lines: list[Line], when: date) -> dict[str, list[dict[str, Any]]]:
    """Rows for the five tenant-specific arrays (often empty, like real invoices)."""
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in TENANT_COLUMNS}
    codes = {ln.product[0] for ln in lines}
    if rng.random() < 0.25:
        rate = _decimal(rng, 400, 800, 2)
        out["InvoiceBooksDetails"].append(dict(zip(TENANT_COLUMNS["InvoiceBooksDetails"], [
            f"BK{rng.randint(1000, 9999)}", f"C-{when.year}-{rng.randint(1, 999):03d}", num(rate),
            num(_decimal(rng, 1, 40, 2)), num(rate), "per TON", rng.choice(["50 lb", "Bulk", "2.5 gal", None])],
            strict=True)))
    if codes & {"UREA46", "DAP1846", "POT060"}:
        for _ in range(rng.randint(1, 2)):
            out["InvoiceBlendsDetails"].append(dict(zip(TENANT_COLUMNS["InvoiceBlendsDetails"], [
                rng.choice(["Corn Starter", "Fall P&K", "Bean Blend"]), rng.choice(["18-46-0", "0-0-60", "11-52-0"]),
                num(_decimal(rng, 100, 450, 1)), num(_decimal(rng, 20, 320, 2)), rng.choice(["Groß", "klein", ""]),
                rng.choice(["JK", "M.R.", "ñ"])], strict=True)))
    if rng.random() < 0.4:
        out["InvoiceDelivsDetails"].append(dict(zip(TENANT_COLUMNS["InvoiceDelivsDetails"], [
            f"T{rng.randint(100000, 999999)}", when.strftime("%m/%d/%Y"), f"TRK-{rng.randint(1, 40)}",
            rng.choice(["Dale O'Neil", 'Ray "Red" Jansen', "José Peña"]), rng.randint(8000, 52000),
            rng.choice(["Home Farm; NW 40", "Section 12; Field 3", "Bottoms"])], strict=True)))
    if codes & {"LP-GAS", "DSL-OR"}:
        start = rng.randint(1000, 90000)
        out["InvoiceEnergyDetails"].append(dict(zip(TENANT_COLUMNS["InvoiceEnergyDetails"], [
            f"SN-{rng.randint(10000, 99999)}", rng.choice(["Propane", "Diesel"]), num(_decimal(rng, 50, 900, 1)),
            rng.randint(-10, 95), start, start + rng.randint(50, 900)], strict=True)))
    if codes & {"APPL-AIR", "APPL-GND", "RUPMAX", "ATRZ4L"}:
        out["InvoiceApplicatorDetails"].append(dict(zip(TENANT_COLUMNS["InvoiceApplicatorDetails"], [
            f"IL-{rng.randint(100000, 999999)}", rng.choice(["Chris Müller", "Pat Nguyen", "Sam Oduya"]),
            rng.choice(["524-549", "100-497", "66222-36"]), rng.randint(0, 15), rng.randint(40, 95),
            rng.choice(["F", "C"]), rng.choice([4, 12, 24, 48])], strict=True)))
    return out


def new_invoice(rng: random.Random, location: str, number: str, modified: datetime,
                people: list[tuple[str, str]], inconsistent_rate: float) -> Inv:
    invoice_date = (modified - timedelta(days=rng.randint(0, 20), hours=rng.randint(0, 23))).date()
    lines = []
    for n in range(1, rng.choice([1, 1, 2, 2, 3, 4, 6]) + 1):
        product = rng.choice(PRODUCTS)
        places = 3 if product[3][1] < 10 else 2
        lines.append(Line(n, product, _decimal(rng, 1, 120, rng.choice([0, 1, 2])),
                          _decimal(rng, product[3][0], product[3][1], places)))
    taxes = {ln.number: ([TAX_CODES[0]] + ([TAX_CODES[1]] if rng.random() < 0.7 else [])
                         + ([TAX_CODES[2]] if rng.random() < 0.1 else []))
             for ln in lines if ln.product[4]}
    customer = rng.choice(people)
    splits: list[tuple[tuple[str, str], Decimal]] = []
    if rng.random() < 0.15:  # landlord/tenant crop-share split
        share = Decimal(rng.choice([25, 33, 40, 50]))
        splits = [(customer, Decimal(100) - share), (rng.choice(people), share)]
    paid = rng.random()
    inv = Inv(location, number, invoice_date, str(uuid.UUID(int=rng.getrandbits(128), version=4)), customer,
              rng.choice(TERMS), lines, taxes, splits, tenant_rows(rng, lines, invoice_date), modified,
              Decimal(1) if paid < 0.5 else (Decimal("0.4") if paid < 0.65 else Decimal(0)))
    if inconsistent_rate and rng.random() < inconsistent_rate:
        inv.skew = _decimal(rng, 0.01, 5, 2) * rng.choice([1, -1])
    if rng.random() < 0.03:
        inv.void = True
    return inv


# -- the HTTP side -------------------------------------------------------------------------------
API_KEY = "sim-agvance-apikey-5f1c2e"
USERNAME = "apiuser"
PASSWORD = "sim-agvance-pass"
DATABASE_ID = "12345"
START = datetime(2024, 1, 2, tzinfo=UTC)
API_TIME = "%Y-%m-%dT%H:%M:%S"
TOO_LARGE = "Result set too large: narrow the date range"


def _error(status: int, message: str) -> SimResponse:
    return SimResponse(status, {"Status": "Error", "Message": message, "Count": "0", "InvoiceRecords": []})


class AgvanceSimulator(SimulatorServer):
    """Agvance Web API: Login, Invoice/GetInvoicesList, sessions idle-expiring.

    `max_results` is the per-call limit above which a window is refused (2,000 like the real
    API; tests pass a small one). Test hooks: `fail_next` (Status Error on HTTP 200, "{session}"
    in the message is replaced by the caller's SessionID), `count_offset` (a wrong Count on every
    answer) and `short_responses` (that many answers lose their last record while Count still
    counts it: an answer cut short on its way).
    """

    base_path = "/api"
    default_port = 8704  # where `invoice-pipeline simulate` serves it (invoice_pipeline/source_types.py)
    demo_name = "agvance_main"  # its source name in the demo and in `simulate`'s config

    def __init__(self, size: int = 200, knobs: Knobs | None = None, host: str = "127.0.0.1", port: int = 0,
                 *, max_results: int = 2000):
        super().__init__(knobs, host, port)
        self.size = size
        self.max_results = max_results
        self.created = datetime.now(UTC).replace(microsecond=0)
        self.lifetime = self.knobs.token_lifetime if self.knobs.token_lifetime is not None else 3600.0
        self.sessions: dict[str, float] = {}
        self.logins = 0
        self.fail_next: list[str] = []
        self.count_offset = 0
        self.short_responses = 0
        self._rng = random.Random(self.knobs.seed)
        self._people = customers(self._rng, max(20, size // 10))
        self._next_number = {loc: 100001 for loc in LOCATIONS}
        self.invoices: dict[str, Inv] = {}
        self._generate()
        self._reindex()

    # -- data ----------------------------------------------------------------------------------
    def _add(self, rng: random.Random, modified: datetime) -> Inv:
        location = rng.choice(LOCATIONS)
        number = str(self._next_number[location])
        self._next_number[location] += 1
        inv = new_invoice(rng, location, number, modified, self._people, self.knobs.inconsistent_rate)
        self.invoices[inv.key] = inv
        return inv

    def _generate(self) -> None:
        rng = self._rng
        span = int((self.created - timedelta(hours=1) - START).total_seconds())
        times = sorted(START + timedelta(seconds=rng.randint(0, span)) for _ in range(self.size))
        for ts in times:  # invoice numbers grow with time per location, as at the source
            self._add(rng, ts)
        # Bulk updates (price corrections, statement runs): groups sharing one LastModifiedUtc
        # second, so windows split and boundaries matter. A group stays under the API limit.
        cap = max(5, min(1500, self.size // 8))
        ordered = sorted(self.invoices.values(), key=lambda i: i.modified)
        bulk_target, in_bulk, used = self.size // 4, 0, set()
        while in_bulk < bulk_target and len(ordered) > 10:
            pivot = rng.randint(len(ordered) // 4, len(ordered) - 1)
            when = ordered[pivot].modified
            if when in used:  # one group per second, so no second exceeds `cap`
                continue
            used.add(when)
            group = rng.sample(ordered[:pivot], min(pivot, rng.randint(5, cap)))
            for inv in group:
                inv.touch(when)
            in_bulk += len(group)

    def _reindex(self) -> None:
        """Sorted (LastModifiedUtc, key) index: a window is two bisects, even at 20,000."""
        pairs = sorted((int(i.modified.timestamp()), k) for k, i in self.invoices.items())
        self._times = [t for t, _ in pairs]
        self._keys = [k for _, k in pairs]

    def mutate(self, updates: int = 0, new: int = 0, voids: int = 0, delete_lines: int = 0, seed: int = 1,
               payments: int = 0, deletes: int = 0) -> dict:
        """Change the data set between runs; every touched invoice gets LastModifiedUtc = now.

        payments change AmountPaid/BalanceDue but not LastModifiedUtc ("payments"); deletes remove
        invoices without a change event ("deleted"); those keys are returned only when asked for.
        """
        rng = random.Random(seed * 104729 + self.knobs.seed)
        now = datetime.now(UTC).replace(microsecond=0)
        touched: dict[str, list[str]] = {"updated": [], "new": [], "voided": [], "lines_deleted": []}
        with self._lock:
            if payments or deletes:
                touched.update(self._pay_or_delete(random.Random(seed * 15485863 + self.knobs.seed), payments, deletes))
            pool = sorted(k for k, i in self.invoices.items() if not i.void)
            rng.shuffle(pool)
            multi = [k for k in pool if len(self.invoices[k].lines) >= 2]
            for key in multi[:delete_lines]:
                inv = self.invoices[key]
                gone = inv.lines.pop()
                inv.taxes.pop(gone.number, None)
                inv.touch(now)
                touched["lines_deleted"].append(key)
            rest = [k for k in pool if k not in touched["lines_deleted"]]
            for key in rest[:updates]:
                inv = self.invoices[key]
                line = rng.choice(inv.lines)
                line.quantity += Decimal(rng.randint(1, 9))  # extension and its taxes follow
                inv.touch(now)
                touched["updated"].append(key)
            for key in rest[updates:updates + voids]:
                self.invoices[key].void = True
                self.invoices[key].touch(now)
                touched["voided"].append(key)
            for _ in range(new):
                touched["new"].append(self._add(rng, now).key)
            self._reindex()
        return touched

    def _pay_or_delete(self, rng: random.Random, payments: int, deletes: int) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        if payments:
            unpaid = sorted(k for k, i in self.invoices.items() if not i.void and i.paid_share < 1)
            out["payments"] = rng.sample(unpaid, min(payments, len(unpaid)))
            for key in out["payments"]:
                inv = self.invoices[key]
                inv.paid_share = Decimal(1) if inv.paid_share > 0 or rng.random() < 0.5 else Decimal("0.5")
                inv._cache = None  # re-render, LastModifiedUtc stays
        if deletes:
            pool = sorted(k for k in self.invoices if k not in out.get("payments", []))
            out["deleted"] = rng.sample(pool, min(deletes, len(pool)))
            for key in out["deleted"]:
                del self.invoices[key]
            self._reindex()
        return out

    def inconsistent_ids(self) -> set[str]:
        """Invoice ids whose header total was skewed by Knobs.inconsistent_rate (reconciliation tests)."""
        return {key for key, inv in self.invoices.items() if inv.skew}

    def expected(self, since: datetime | None = None) -> dict[str, Any]:
        """Truth from the simulator's own Decimals (not through the client's mapping)."""
        out: dict[str, Any] = {"invoices": 0, "lines": 0, "tax_lines": 0, "total_amount": Decimal("0.00"),
                               "line_amount": Decimal("0.00"), "tax_amount": Decimal("0.00")}
        with self._lock:
            for inv in self.invoices.values():
                if since is not None and inv.modified < since:
                    continue
                _, tax, total, _, _ = inv.amounts()
                out["invoices"] += 1
                out["lines"] += len(inv.lines)
                out["tax_lines"] += len(inv.tax_rows())
                out["total_amount"] += total
                out["line_amount"] += sum((ln.extension for ln in inv.lines), Decimal(0))
                out["tax_amount"] += tax
        return out

    def source_config(self) -> dict[str, Any]:
        return {"type": "agvance", "base_url": self.base_url, "api_key": API_KEY, "username": USERNAME,
                "password": PASSWORD, "database_id": DATABASE_ID, "start_date": "2024-01-01T00:00:00Z"}

    # -- HTTP ----------------------------------------------------------------------------------
    def handle(self, request: SimRequest) -> SimResponse:
        route = request.path[len(self.base_path):].lower() if request.path.startswith(self.base_path) else ""
        if route not in ("/login", "/invoice/getinvoiceslist"):
            return SimResponse(404, {"Message": f"No HTTP resource was found that matches the URI '{request.path}'."})
        if request.method != "POST":
            return SimResponse(405, {"Message": f"The resource does not support http method '{request.method}'."})
        if request.headers.get("ApiKey") != API_KEY:
            return _error(401, "Invalid ApiKey")
        try:
            body = request.json()
        except orjson.JSONDecodeError:
            body = None
        if route == "/login":
            return self._login(body)
        session = request.headers.get("SessionID") or ""
        with self._lock:
            last = self.sessions.get(session)
            if last is None:
                return _error(401, "Invalid SessionID")
            if time.monotonic() - last > self.lifetime:
                del self.sessions[session]
                return _error(401, "Session expired")
            self.sessions[session] = time.monotonic()
            if self.fail_next:
                return _error(200, self.fail_next.pop(0).replace("{session}", session))
        return self._list(request, body)

    def _login(self, body: Any) -> SimResponse:
        if not isinstance(body, dict) or (body.get("UserName"), body.get("Password"), str(body.get("DatabaseID"))) != (
            USERNAME, PASSWORD, DATABASE_ID
        ):
            return SimResponse(200, {"Status": "Error", "Message": "Invalid UserName, Password or DatabaseID",
                                     "SessionID": ""})
        session = uuid.uuid4().hex
        with self._lock:
            self.sessions[session] = time.monotonic()
            self.logins += 1
        return SimResponse(200, {"Status": "Success", "Message": "", "SessionID": session})

    def _list(self, request: SimRequest, body: Any) -> SimResponse:
        bounds = []
        for name, default in (("lastModifiedOnOrAfterUtc", 0), ("lastModifiedOnOrBeforeUtc", 2**40)):
            value = request.param(name) or ""
            try:  # both optional; second precision, UTC, both inclusive
                parsed = datetime.strptime(value, API_TIME).replace(tzinfo=UTC) if value else None
                bounds.append(int(parsed.timestamp()) if parsed else default)
            except ValueError:
                return _error(200, f"Invalid {name} '{value}': expected format yyyy-MM-ddTHH:mm:ss")
        items = body.get("InvoiceListRequestItems") if isinstance(body, dict) else None
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            return _error(200, "InvoiceListRequestItems is required")
        with self._lock:
            lo, hi = bisect.bisect_left(self._times, bounds[0]), bisect.bisect_right(self._times, bounds[1])
            chosen = [self.invoices[k] for k in self._keys[lo:hi]]
            chosen = [i for i in chosen if any(_matches(i, item) for item in items)] if any(items) else chosen
            if len(chosen) > self.max_results:
                return _error(200, TOO_LARGE)
            parts = [i.rendered() for i in chosen]
            count = str(len(parts) + self.count_offset).encode()
            if parts and self.short_responses > 0:
                self.short_responses -= 1
                parts.pop()
        return SimResponse(200, b'{"Status":"Success","Message":"","Count":"' + count + b'","InvoiceRecords":['
                           + b",".join(parts) + b"]}")


def _matches(inv: Inv, item: dict[str, Any]) -> bool:
    """The request item fields the simulator honours (an empty item matches everything)."""
    number = int(inv.number)
    return ((not item.get("customerId") or item["customerId"] == inv.customer[0])
            and (not item.get("locationId") or item["locationId"] == inv.location)
            and (item.get("startInvoiceNumber") in (None, "") or number >= int(item["startInvoiceNumber"]))
            and (item.get("endInvoiceNumber") in (None, "") or number <= int(item["endInvoiceNumber"]))
            and (not item.get("voidOnly") or inv.void))


SIMULATOR_CLASS = AgvanceSimulator
