"""SoftwareOne simulator: doc-shaped payloads, RQL subset, $meta paging, problem JSON, mutations."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import requests

from invoice_pipeline.simulation import Knobs
from invoice_pipeline.sources.softwareone.simulator import SIMULATOR_CLASS, PATH

DOC = Path(__file__).parent / "fixtures" / "api_docs" / "softwareone_003_invoices.json"  # the vendor's example
ALL = 'ge(audit.created.at,"2000-01-01T00:00:00.000Z")'


@pytest.fixture(scope="module")
def sim():
    with SIMULATOR_CLASS(size=150, knobs=Knobs(seed=7)) as s:
        yield s


def get(sim, query: str, token: str | None = None) -> requests.Response:
    token = sim.token if token is None else token
    return requests.get(f"{sim.base_url}{PATH}?{query}", headers={"Authorization": f"Bearer {token}"}, timeout=10)


def shape(value):
    """Keys (in order) and value kinds, recursively; lists by their first element."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if value == "[Circular Reference]":
        return value
    return "number" if isinstance(value, int | float) and not isinstance(value, bool) else type(value).__name__


def strip_meta_omitted(s):
    """`$meta.omitted` holds names (["text"] in the doc, [] or ["lines"] here): compare it as a list only."""
    if isinstance(s, dict):
        return {k: ([] if k == "omitted" else strip_meta_omitted(v)) for k, v in s.items()}
    if isinstance(s, list):
        return [strip_meta_omitted(x) for x in s]
    return s


def test_payload_matches_the_doc_example_field_by_field(sim):
    example = json.loads(DOC.read_text())
    body = get(sim, f"{ALL}&select=audit,+lines,+erpData,+price&order=-audit.updated.at&limit=1").json()
    assert strip_meta_omitted(shape(body)) == strip_meta_omitted(shape(example))
    item = body["data"][0]
    assert item["seller"]["erpLink"]["seller"] == "[Circular Reference]"
    assert list(item["erpData"]["addresses"]) == ["billTo", "licenseTo", "sellTo", "shipTo"]
    assert len(item["lines"][0]) == len(example["data"][0]["lines"][0]) == 45


def test_never_updated_invoices_have_no_audit_updated(sim):
    data = get(sim, f"{ALL}&select=audit&limit=100").json()["data"]
    never = [i for i in data if "updated" not in i["audit"]]
    assert never and len(never) < len(data)
    assert all(set(i["audit"]) == {"created"} for i in never)


def test_audit_timestamps_come_in_all_documented_styles(sim):
    stamps = [i["audit"]["created"]["at"] for i in get(sim, f"{ALL}&select=audit&limit=100").json()["data"]]
    assert any(s.endswith("0+00:00") and len(s.split(".")[1]) == 13 for s in stamps)  # 7 digits +00:00
    assert any(s[-6] in "+-" and not s.endswith("+00:00") for s in stamps)  # another offset
    assert any(len(s) == 24 and s.endswith("Z") for s in stamps)  # milliseconds Z
    assert any(len(s) == 20 and s.endswith("Z") for s in stamps)  # whole seconds


def test_envelope_paging_and_limit_cap(sim):
    body = get(sim, "limit=500&offset=0").json()
    assert body["$meta"]["pagination"] == {"offset": 0, "limit": 100, "total": 150}
    assert len(body["data"]) == 100
    tail = get(sim, "limit=100&offset=100").json()
    assert len(tail["data"]) == 50 and tail["$meta"]["pagination"]["offset"] == 100
    assert get(sim, "").json()["$meta"]["pagination"]["limit"] == 10  # default
    ids = [i["id"] for i in body["data"] + tail["data"]]
    assert len(set(ids)) == 150 and ids == sorted(ids)


def test_optional_fields_omitted_unless_selected(sim):
    # erpData and price are optional in SoftwareOne's OpenAPI: only when selected (select=+erpData,+price).
    everything = ["audit", "erpData", "lines", "price"]
    body = get(sim, "limit=3").json()
    assert body["$meta"]["omitted"] == everything
    assert all(not set(everything) & set(i) and i["$meta"]["omitted"] == everything for i in body["data"])
    body = get(sim, "select=audit,+lines,+erpData,+price&limit=3").json()
    assert body["$meta"]["omitted"] == []
    assert all(isinstance(i["lines"], list) and {"audit", "erpData", "price"} <= set(i) for i in body["data"])
    body = get(sim, "select=+lines&limit=3").json()
    assert body["$meta"]["omitted"] == ["audit", "erpData", "price"]


def test_rql_filters_match_the_data(sim):
    invs = sim.data.invoices
    bound = sorted(i.created for i in invs)[75]
    t = f'"{bound:%Y-%m-%dT%H:%M:%S}.{bound.microsecond // 1000:03d}Z"'
    cases = {
        f"ge(audit.created.at,{t})": lambda i: i.created >= bound.replace(microsecond=bound.microsecond // 1000 * 1000),
        f"lt(audit.created.at,{t})": lambda i: i.created < bound.replace(microsecond=bound.microsecond // 1000 * 1000),
        f"gt(audit.updated.at,{t})": lambda i: i.updated is not None and i.updated > bound.replace(microsecond=bound.microsecond // 1000 * 1000),
        f'or(ge(audit.updated.at,{t}),ge(audit.created.at,{t}))': lambda i: i.last_modified >= bound.replace(microsecond=bound.microsecond // 1000 * 1000),
        'eq(status,"Paid")': lambda i: i.status == "Paid",
        "ne(status,Paid)": lambda i: i.status != "Paid",
        f'and(eq(id,"{invs[3].id}"),le(audit.created.at,"2100-01-01T00:00:00Z"))': lambda i: i is invs[3],
    }
    for rql, predicate in cases.items():
        body = get(sim, f"{rql}&select=audit&limit=100").json()
        want = sum(1 for i in invs if predicate(i))
        assert body["$meta"]["pagination"]["total"] == want, rql
        assert 0 < want < len(invs) or rql.startswith("and"), rql


def test_order_descending_and_by_audit(sim):
    ids = [i["id"] for i in get(sim, "order=-id&limit=100").json()["data"]]
    assert ids == sorted(ids, reverse=True)
    data = get(sim, "select=audit&order=+audit.created.at,+id&limit=100").json()["data"]
    created = [sim.data.by_id[i["id"]].created for i in data]
    assert created == sorted(created)


@pytest.mark.parametrize(
    "query",
    [
        'and(ge(audit.created.at,"2024-01-01T00:00:00Z")',  # unbalanced
        'ge(total,"5")',  # unsupported field
        "ge(audit.created.at,2024-01-01)",  # unquoted timestamp
        'ge(audit.created.at,"not a time")&select=audit',
        'like(id,"INV*")',  # unsupported operator
        'ge(audit.created.at,"2024-01-01T00:00:00Z")',  # audit filter without select=audit
        "order=+audit.created.at",  # audit order without select=audit
        "limit=-1",
        "foo=bar",
    ],
)
def test_bad_queries_get_400_problem_json(sim, query):
    resp = get(sim, query)
    assert resp.status_code == 400
    body = resp.json()
    assert set(body) == {"type", "title", "status", "detail", "traceId"} and body["status"] == 400 and body["detail"]


def test_bad_token_gets_401_problem_json(sim):
    resp = get(sim, "limit=1", token="nope")
    assert resp.status_code == 401
    assert set(resp.json()) == {"type", "title", "status", "detail", "traceId"}
    assert requests.get(f"{sim.base_url}{PATH}", timeout=10).status_code == 401  # no header at all


def test_source_config_points_at_the_simulator(sim):
    cfg = sim.source_config()
    assert cfg == {"type": "softwareone", "base_url": sim.base_url, "api_token": sim.token, "start_date": "2024-01-01T00:00:00Z"}


def test_deterministic_and_last_modified_spread():
    with SIMULATOR_CLASS(size=40, knobs=Knobs(seed=3)) as a, SIMULATOR_CLASS(size=40, knobs=Knobs(seed=3)) as b:
        q = "select=audit,+lines&limit=40"
        assert get(a, q).json()["data"] == get(b, q).json()["data"]
        lm = [i.last_modified for i in a.data.invoices]
        assert min(lm) >= datetime(2024, 1, 2, tzinfo=UTC)
        assert max(lm) <= a.created_at - timedelta(hours=1)


def test_inconsistent_rate_breaks_exactly_that_share():
    with SIMULATOR_CLASS(size=200, knobs=Knobs(inconsistent_rate=0.25)) as s:
        bad = [i for i in s.data.invoices if i.total != i.net + i.tax]
        assert 25 <= len(bad) <= 75
        item = get(s, f'eq(id,"{bad[0].id}")&select=+lines,+erpData').json()["data"][0]
        lines = sum(Decimal(str(ln["amountIncludingVat"])) for ln in item["lines"])
        assert Decimal(str(item["erpData"]["invoiceTotal"])) != lines


def test_mutate_and_expected():
    with SIMULATOR_CLASS(size=80) as s:
        before = s.expected()
        never = {i.id for i in s.data.invoices if i.updated is None}
        lines_before = {i.id: len(i.lines) for i in s.data.invoices}
        time.sleep(0.01)
        mark = datetime.now(UTC).replace(microsecond=0)
        touched = s.mutate(updates=3, new=2, voids=2, delete_lines=2, seed=5)
        assert {k: len(v) for k, v in touched.items()} == {"updated": 3, "new": 2, "voided": 2, "lines_deleted": 2}
        assert touched["updated"][0] in never  # an invoice updated for the first time
        ids = [i for v in touched.values() for i in v]
        assert len(set(ids)) == 9
        after = s.expected(since=mark)
        assert after["invoices"] == 9
        assert s.expected()["invoices"] == before["invoices"] + 2
        for invoice_id in touched["voided"]:
            assert s.data.by_id[invoice_id].status == "Cancelled" and s.data.by_id[invoice_id].balance == 0
        for invoice_id in touched["lines_deleted"]:
            assert len(s.data.by_id[invoice_id].lines) == lines_before[invoice_id] - 1
        body = get(s, f'ge(audit.updated.at,"{mark:%Y-%m-%dT%H:%M:%S}.000Z")&select=audit&limit=100').json()
        assert {i["id"] for i in body["data"]} == set(touched["updated"] + touched["voided"] + touched["lines_deleted"])


