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


def _reference_flatten(payloads: list[tuple[str, dict]]) -> dict[str, tuple[int, dict[str, list]]]:
    """The straightforward algorithm (one dict per row, eager null back-fill) the fast one must equal."""
    import orjson

    from invoice_pipeline.flatten import SEP, _ambiguous, escape_key, scalar_text

    tables: dict[str, tuple[list[int], dict[str, list]]] = {}

    def append(table: str, row: dict) -> None:
        count, cols = tables.setdefault(table, ([0], {}))
        n = count[0]
        for key, value in row.items():
            cols.setdefault(key, [None] * n).append(value)
        count[0] = n + 1
        for col in cols.values():
            if len(col) == n:
                col.append(None)

    def walk(obj: dict, table: str, prefix: str, row: dict, invoice_id: str, row_id: str) -> None:
        for key, value in obj.items():
            path = prefix + (escape_key(str(key)) if _ambiguous(str(key), prefix == FIELD) else str(key))
            if isinstance(value, dict):
                if value:
                    walk(value, table, path + SEP, row, invoice_id, row_id)
                else:
                    row[path] = "{}"
            elif isinstance(value, list):
                if all(not isinstance(v, dict | list) for v in value):
                    row[path] = orjson.dumps(value).decode()
                else:
                    child = f"{table}{SEP}{path[1:]}"
                    for pos, item in enumerate(value):
                        rid = f"{row_id}.{pos}" if row_id else str(pos)
                        crow = {"_invoice_id": invoice_id, "_row_id": rid, "_parent_row_id": row_id or None, "_position": pos}
                        if isinstance(item, dict):
                            walk(item, child, FIELD, crow, invoice_id, rid)
                        elif isinstance(item, list):
                            crow[FIELD + "value"] = orjson.dumps(item).decode()
                        else:
                            crow[FIELD + "value"] = scalar_text(item)
                        append(child, crow)
            else:
                row[path] = scalar_text(value)

    for invoice_id, payload in payloads:
        row = {"_run_id": "r", "_invoice_id": invoice_id}
        walk(payload, "invoices", FIELD, row, invoice_id, "")
        append("invoices", row)
    return {t: (count[0], cols) for t, (count, cols) in tables.items()}


def _random_payload(rng, depth: int = 0) -> dict:
    keys = ["id", "Id", "amount", "lines", "a", "a__b", "taxes", "x", "meta", "Größe", "tags"]
    scalars = [None, "", "text", 0, -7, 12.5, 1e20, True, False, "1041.70", 2**70]
    out: dict = {}
    for key in rng.sample(keys, rng.randint(0, 6)):
        kind = rng.random()
        if kind < 0.45 or depth >= 3:
            out[key] = rng.choice(scalars)
        elif kind < 0.65:
            out[key] = _random_payload(rng, depth + 1) if rng.random() < 0.8 else {}
        elif kind < 0.85:
            out[key] = [_random_payload(rng, depth + 1) for _ in range(rng.randint(0, 3))]
        else:  # scalar arrays, nested arrays, mixed arrays
            out[key] = rng.choice([[1, "b", None], [], [[1, 2], {"k": 1}], [{"k": 1}, 3]])
    return out


def test_fast_flatten_equals_the_reference_on_random_and_colliding_shapes() -> None:
    import random

    rng = random.Random(7)
    payloads = [(f"I{n}", _random_payload(rng)) for n in range(400)]
    # paths that used to collide: "a__b" twice in one row, and two arrays feeding one child table
    payloads.append(("C1", {"a__b": 1, "a": {"b": 2}, "lines": [{"x": 1}], "lines__x": [{"y": 2}]}))
    payloads.append(("C2", {"lines": [{"x": [{"z": 1}]}], "lines__x": [{"z": 2}, {"w": 3}]}))
    tables: dict[str, TableBuffer] = {}
    for invoice_id, payload in payloads:
        flatten_record(invoice_id, payload, tables, {"_run_id": "r"})
    expected = _reference_flatten(payloads)
    assert set(tables) == set(expected) and len(expected) > 5
    for name, (rows, cols) in expected.items():
        assert tables[name].rows == rows, name
        assert tables[name].columns == cols, name
        assert list(tables[name].columns) == list(cols), name  # same column order too


def test_sparse_columns_are_padded_when_read() -> None:
    buffer = TableBuffer()
    buffer.append({"a": "1", "b": "x"})
    buffer.append({"a": "2"})
    buffer.append({"a": "3"})
    assert buffer.columns == {"a": ["1", "2", "3"], "b": ["x", None, None]}
    buffer.append({"b": "y"})
    buffer.append({"b": "z"})
    assert buffer.columns == {"a": ["1", "2", "3", None, None], "b": ["x", None, None, "y", "z"]} and buffer.rows == 5


def test_keys_holding_the_separator_never_share_a_column_or_table() -> None:
    """Issue 19: `Meta__x` beside {"Meta": {"x"}} was one column (a value dropped), `Extra__items`
    and `Extra.items` one child table with the same _row_id."""
    from invoice_pipeline.flatten import FIELD, Naming

    tables: dict[str, TableBuffer] = {}
    flatten_record("1", {"Meta__x": "flat", "Meta": {"x": "nested"}, "_id": "top", "a_": {"b": 1}, "a": {"_b": 2},
                         "Extra__items": [{"v": "flat"}], "Extra": {"items": [{"v": "nested"}]}}, tables, {})
    root = tables["invoices"].columns
    values = sorted(v[0] for k, v in root.items() if k.startswith(FIELD))
    assert values == ["1", "2", "flat", "nested", "top"]  # five fields, five columns: nothing dropped
    children = {k: b.columns[".v"] for k, b in tables.items() if k != "invoices"}
    assert sorted(children.values()) == [["flat"], ["nested"]]
    # SQL names read like the keys; the plain nesting keeps the plain name, the newcomer gets "__2"
    names = Naming({}, reserved=["_invoice_id"]).assign(p for p in root if p.startswith(FIELD))
    assert names[".Meta__x"] == "Meta__x" and sorted(names.values()) == [
        "Meta__x", "Meta__x__2", "_id", "a___b", "a___b__2"]
    table_names = Naming({"invoices": "invoices"}).assign(children)
    assert sorted(table_names.values()) == ["invoices__Extra__items", "invoices__Extra__items__2"]
    assert table_names["invoices__Extra__items"] == "invoices__Extra__items"
    # an existing warehouse's names stay: a stored path keeps its name even if a newcomer reads alike
    kept = Naming({".Meta__x": "Meta__x"}).assign(p for p in root if p.startswith(FIELD))
    assert ".Meta__x" not in kept and "Meta__x__2" in kept.values()
