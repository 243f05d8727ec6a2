"""Agvance listing: one GetInvoicesList call (errors arrive with HTTP 200; `Count` checked against
the records), a window the API refuses as too large halved until it fits, and the request items that
narrow a call to given invoice numbers.

`Listings` is mixed into AgvanceSource (client.py), whose `http`, `stats` and `name` it uses.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

from invoice_pipeline.errors import AuthExpired
from invoice_pipeline.sources.helpers import require_objects

log = logging.getLogger("invoice_pipeline.agvance")

LIST_PATH = "/Invoice/GetInvoicesList"
LIST_ENDPOINT = f"POST {LIST_PATH}"
API_TIME = "%Y-%m-%dT%H:%M:%S"  # the API's bound format: UTC, second precision
SECOND = timedelta(seconds=1)
COUNT_ATTEMPTS = 3  # a window whose Count disagrees with its records is asked this often, then the run fails
RANGE_GAP = 20  # invoice numbers this close share one range (a few extra invoices beat another item)


class _TooLarge(Exception):
    """The API refused a window: more invoices than it answers in one call."""


def _floor(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(microsecond=0)


def _fmt(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime(API_TIME)


def number_ranges(keys: Collection[str]) -> list[dict[str, Any]]:
    """GetInvoicesList request items covering these invoice keys ("<location>-<number>"): one per
    run of numbers no more than RANGE_GAP apart, a whole location for a key without a number."""
    numbers: dict[str, list[int]] = {}
    for key in keys:
        location, _, number = key.rpartition("-")
        if location and number.isdigit():
            numbers.setdefault(location, []).append(int(number))
        else:  # not a range-able number: the whole location
            numbers.setdefault(location, [])
    items: list[dict[str, Any]] = []
    for location, nums in sorted(numbers.items()):
        if not nums:
            items.append({"locationId": location})
            continue
        nums.sort()
        lo = hi = nums[0]
        for n in nums[1:] + [None]:
            if n is not None and n - hi <= RANGE_GAP:
                hi = n
                continue
            items.append({"locationId": location, "startInvoiceNumber": lo, "endInvoiceNumber": hi})
            if n is not None:
                lo = hi = n
    return items


class Listings:
    """GetInvoicesList calls and the halving of refused windows (mixed into AgvanceSource)."""

    def _validate(self, status: int, body: Any) -> None:
        """Errors arrive with HTTP 200: Status must be 'Success' on every response."""
        if not isinstance(body, dict):
            raise self.http.error("response is not a JSON object", endpoint=LIST_ENDPOINT, status=status)
        if str(body.get("Status", "")).lower() == "success":
            return
        message = str(body.get("Message") or "")
        lowered = message.lower()
        if "too large" in lowered:
            raise _TooLarge(message)
        if "session" in lowered and ("expired" in lowered or "invalid" in lowered):
            raise AuthExpired(message)
        raise self.http.error(
            f"API answered Status {body.get('Status')!r}: {message or '(no message)'}",
            endpoint=LIST_ENDPOINT,
            status=status,
        )

    def _list(self, start: datetime, end: datetime, items: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Invoices with start <= LastModifiedUtc <= end (both inclusive, whole seconds), narrowed by items.

        `Count` is the API's own statement of how many invoices the answer holds: an answer whose
        records disagree with it (cut short by a proxy or the server) is asked again, and fails the
        run if it still disagrees; it is never taken as it is."""
        params = {"lastModifiedOnOrAfterUtc": _fmt(start), "lastModifiedOnOrBeforeUtc": _fmt(end)}
        span = f"window {_fmt(start)}..{_fmt(end)}"
        for attempt in range(1, COUNT_ATTEMPTS + 1):
            # An empty request item means "no narrowing" (customer, location, ...).
            body = self.http.request(
                "POST", LIST_PATH, params=params, json={"InvoiceListRequestItems": items or [{}]}, validate=self._validate
            ).body
            records = body.get("InvoiceRecords")
            if not isinstance(records, list):
                raise self.http.error(f"{span}: response has no 'InvoiceRecords' array", endpoint=LIST_ENDPOINT)
            try:
                count = int(str(body.get("Count")).strip())
            except ValueError:
                raise self.http.error(
                    f"{span}: Count is not a number: {body.get('Count')!r}", endpoint=LIST_ENDPOINT
                ) from None
            self.stats.count("pages")
            if count == len(records):
                break
            self.stats.count("count_mismatches")
            if attempt == COUNT_ATTEMPTS:
                raise self.http.error(
                    f"{span}: Count says {count} invoices but InvoiceRecords holds {len(records)} "
                    f"(asked {COUNT_ATTEMPTS} times); nothing of this run is kept", endpoint=LIST_ENDPOINT
                )
            log.warning("source '%s': %s: Count says %d invoices but InvoiceRecords holds %d; asking again (%d/%d)",
                        self.name, span, count, len(records), attempt, COUNT_ATTEMPTS - 1)
        require_objects(self.http, records, f"{span}: InvoiceRecords", LIST_ENDPOINT)
        self.stats.count("scanned", len(records))
        return records

    def _fetch(self, start: datetime, end: datetime, items: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """One window; a refused window is halved ([start, mid] and [mid+1s, end]) until it fits."""
        try:
            return self._list(start, end, items)
        except _TooLarge as exc:
            if end <= start:
                raise self.http.error(
                    f"more invoices than the API returns in one call were modified in the single second "
                    f"{_fmt(start)} ({exc}); the window cannot be narrowed further",
                    endpoint=LIST_ENDPOINT,
                ) from None
        mid = start + timedelta(seconds=int((end - start).total_seconds()) // 2)
        self.stats.count("window_splits")
        log.debug("source '%s': window %s..%s too large, splitting at %s", self.name, _fmt(start), _fmt(end), _fmt(mid))
        return self._fetch(start, mid, items) + self._fetch(mid + SECOND, end, items)
