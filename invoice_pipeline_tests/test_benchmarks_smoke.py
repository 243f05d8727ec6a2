"""The benchmarks' measured tasks still run against the product's current internals (no timing here).

Benchmarks are not run by CI; without this, a change to prepare_batch or write_batch could leave
`python -m benchmarks` broken until the next time someone measures.
"""

from __future__ import annotations

import json

import duckdb
import pytest

from benchmarks import children
from benchmarks.sims import _render_part

INVOICES = 40


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("pages") / "oracle_details.jsonl"
    _render_part(INVOICES, 0, 1, path)
    return str(path)


def _emitted(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_write_floor_stores_the_rows_the_product_loads(pages, tmp_path, capsys):
    children.product(pages, str(tmp_path / "product"))
    product = _emitted(capsys)
    children.write_floor(pages, str(tmp_path / "floor"))
    floor = _emitted(capsys)

    assert product["invoices"] == INVOICES
    assert floor["rows"] == product["rows"] > INVOICES  # every flattened row, children included
    for key in ("seconds", "plain_seconds", "single_seconds"):
        assert floor[key] > 0
    # the plain passes really stored the same batches: root rows, raw payloads, conformed invoices
    for name in ("plain", "single"):
        con = duckdb.connect(str(tmp_path / "floor" / f"{name}.duckdb"), read_only=True)
        try:
            assert con.execute("SELECT count(*) FROM raw").fetchone()[0] == INVOICES
            assert con.execute("SELECT count(*) FROM conformed_invoices").fetchone()[0] == INVOICES
            flat = [t for (t,) in con.execute("SELECT table_name FROM duckdb_tables() WHERE table_name LIKE 'flat_%'").fetchall()]
            assert sum(con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in flat) == product["rows"]
        finally:
            con.close()
