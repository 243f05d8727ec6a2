from __future__ import annotations

from invoice_pipeline.flatten import CHILD_META, FIELD, Naming, TableBuffer, flatten_record


def flat(payload: dict) -> dict[str, TableBuffer]:
    tables: dict[str, TableBuffer] = {}
    flatten_record("INV1", payload, tables, {"_run_id": "r"})
    return tables


def test_objects_become_columns_and_arrays_child_tables() -> None:
    t = flat({
        "id": 7, "amount": 12.5, "void": False, "none": None,
        "erpData": {"dueDate": "2025-01-01", "addresses": {"billTo": {"city": "Oslo"}}},
        "tags": ["a", "b"],
        "lines": [{"id": "L1", "taxes": [{"rate": 19}, {"rate": 7}]}, {"id": "L2", "taxes": []}],
    })
    root = t["invoices"].columns
    assert root[FIELD + "id"] == ["7"] and root[FIELD + "amount"] == ["12.5"] and root[FIELD + "void"] == ["false"]
    assert root[FIELD + "none"] == [None]
    assert root[FIELD + "erpData__addresses__billTo__city"] == ["Oslo"]
    assert root[FIELD + "tags"] == ['["a","b"]']
    lines = t["invoices__lines"].columns
    assert lines["_row_id"] == ["0", "1"] and lines["_parent_row_id"] == [None, None]
    taxes = t["invoices__lines__taxes"].columns
    assert taxes["_row_id"] == ["0.0", "0.1"] and taxes["_parent_row_id"] == ["0", "0"]
    assert taxes[FIELD + "rate"] == ["19", "7"] and taxes["_invoice_id"] == ["INV1", "INV1"]


def test_new_field_midway_backfills_nulls() -> None:
    tables: dict[str, TableBuffer] = {}
    flatten_record("A", {"x": 1}, tables, {})
    flatten_record("B", {"x": 2, "new": "n"}, tables, {})
    flatten_record("C", {"x": 3}, tables, {})
    cols = tables["invoices"].columns
    assert cols[FIELD + "new"] == [None, "n", None] and tables["invoices"].rows == 3


def test_json_keys_never_overwrite_meta_columns() -> None:
    t = flat({"_invoice_id": "forged", "_row_id": "x"})
    assert t["invoices"].columns["_invoice_id"] == ["INV1"]
    assert t["invoices"].columns[FIELD + "_invoice_id"] == ["forged"]


def test_naming_is_case_insensitive_unique_stable_and_bounded() -> None:
    naming = Naming({}, reserved=CHILD_META)
    names = naming.assign([FIELD + "Rate", FIELD + "rate", FIELD + "_row_id", FIELD + "x" * 500, FIELD + 'a"; DROP TABLE t; --'])
    lowered = [n.lower() for n in names.values()]
    assert len(set(lowered)) == len(lowered)
    assert names[FIELD + "Rate"] == "Rate" and names[FIELD + "rate"] == "rate__2"
    assert names[FIELD + "_row_id"] != "_row_id"
    assert all(len(n) <= 120 for n in names.values())
    again = Naming(naming.assigned, reserved=CHILD_META)
    assert again.assign([FIELD + "rate", FIELD + "RATE"]) == {FIELD + "RATE": "RATE__3"}
