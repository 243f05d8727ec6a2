"""Fakebill API simulator: GET /v1/invoices (window or ids, offset paging), an X-Api-Key header."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from invoice_pipeline.simulation import Knobs, SimRequest, SimResponse, SimulatorServer

API_KEY = "fakebill-key"
START = datetime(2025, 1, 1, tzinfo=UTC)
CHANGE_KINDS = ("updated", "new", "voided", "lines_deleted")


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class FakebillSimulator(SimulatorServer):
    default_port = 0  # any free port: `invoice-pipeline simulate` writes where it serves it
    demo_name = "fakebill_demo"

    def __init__(self, size: int = 200, knobs: Knobs | None = None, host: str = "127.0.0.1", port: int = 0):
        super().__init__(knobs, host, port)
        rng = random.Random(self.knobs.seed)
        self.invoices: dict[str, dict[str, Any]] = {}
        for n in range(size):
            self._add(n, START + timedelta(hours=n), rng)

    def _add(self, n: int, updated: datetime, rng: random.Random) -> str:
        lines = [{"id": f"FB{n:05d}-{k}", "description": f"item {k}", "amount": f"{rng.randint(1, 9999) / 100:.2f}",
                  "tax": "0.00"} for k in range(1, rng.randint(3, 5))]  # 2-4 lines
        for line in lines:
            line["tax"] = f"{Decimal(line['amount']) * Decimal('0.20'):.2f}"
        total = sum(Decimal(ln["amount"]) + Decimal(ln["tax"]) for ln in lines)
        issued = date(2025, 1, 1) + timedelta(days=n % 300)
        invoice_id = f"FB{n:05d}"
        self.invoices[invoice_id] = {
            "id": invoice_id, "number": f"{n:05d}", "status": "open", "currency": "EUR",
            "customer": {"id": f"C{n % 7}", "name": f"Customer {n % 7}"},
            "issued": issued.isoformat(), "due": (issued + timedelta(days=30)).isoformat(),
            "updated": updated.isoformat(), "total": str(total), "balance": str(total if n % 3 else Decimal("0.00")),
            "lines": lines,
        }
        return invoice_id

    def source_config(self) -> dict[str, Any]:
        return {"type": "fakebill", "base_url": self.base_url, "api_key": API_KEY, "start_date": "2024-01-01T00:00:00Z"}

    def handle(self, request: SimRequest) -> SimResponse:
        if request.headers.get("X-Api-Key") != API_KEY:
            return SimResponse(401, {"error": "bad api key"})
        if request.path != "/v1/invoices" or request.method != "GET":
            return SimResponse(404, {"error": f"no route {request.method} {request.path}"})
        ids = set(filter(None, (request.param("ids") or "").split(",")))
        start, end = _parse(request.param("modified_from")), _parse(request.param("modified_to"))
        with self._lock:
            chosen = [inv for key, inv in sorted(self.invoices.items())
                      if (not ids or key in ids)
                      and (start is None or datetime.fromisoformat(inv["updated"]) >= start)
                      and (end is None or datetime.fromisoformat(inv["updated"]) <= end)]
        offset, limit = int(request.param("offset", "0")), int(request.param("limit", "50"))
        return SimResponse(200, {"items": chosen[offset:offset + limit], "total": len(chosen)})

    def mutate(self, updates: int = 0, new: int = 0, voids: int = 0, delete_lines: int = 0, seed: int = 1) -> dict:
        """Change the data set between runs (touched invoices: updated = now); what changed, by kind."""
        rng = random.Random(seed)
        now = datetime.now(UTC).replace(microsecond=0)
        touched: dict[str, list[str]] = {kind: [] for kind in CHANGE_KINDS}
        with self._lock:
            live = sorted(k for k, inv in self.invoices.items() if inv["status"] != "void")
            picked = rng.sample(live, min(len(live), updates + voids + delete_lines))
            for kind, count in (("updated", updates), ("voided", voids), ("lines_deleted", delete_lines)):
                for key in picked[:count]:
                    inv = self.invoices[key]
                    if kind == "updated":
                        inv["balance"] = "0.00"
                        inv["status"] = "paid"
                    elif kind == "voided":
                        inv["status"] = "void"
                    else:  # every invoice has two lines or more
                        gone = inv["lines"].pop()
                        total = Decimal(inv["total"]) - Decimal(gone["amount"]) - Decimal(gone["tax"])
                        inv["total"] = inv["balance"] = str(total)
                    inv["updated"] = now.isoformat()
                    touched[kind].append(key)
                picked = picked[count:]
            for _ in range(new):
                touched["new"].append(self._add(len(self.invoices), now, rng))
        return touched

    def expected(self, since: datetime | None = None) -> dict:
        with self._lock:
            chosen = [inv for inv in self.invoices.values()
                      if since is None or datetime.fromisoformat(inv["updated"]) >= since]
            return {"invoices": len(chosen), "lines": sum(len(inv["lines"]) for inv in chosen),
                    "total_amount": sum((Decimal(inv["total"]) for inv in chosen), Decimal("0.00"))}


SIMULATOR_CLASS = FakebillSimulator
