"""What a controller and a BI tool see in the published snapshot: every SQL example of the docs runs,
the views count only what is owed or earned per currency, keys and comments are declared, the data
dictionary covers every column, and pandas keeps exact decimals on the documented path."""

from __future__ import annotations

import copy
import re
from collections import defaultdict
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

from invoice_pipeline.conformed import CONFORMED_KEYS, CONFORMED_TABLES
from invoice_pipeline.demo import EXAMPLE_QUERIES
from invoice_pipeline.dictionary import DEFAULT_PATH, SNAPSHOT_BOOKKEEPING
from invoice_pipeline.lifecycle import build_aging_snapshot
from invoice_pipeline.pipeline import run_source
from invoice_pipeline.publish import publish
from invoice_pipeline.simulate import start_simulators
from invoice_pipeline.warehouse import Warehouse

from . import api_docs_payloads as docs
from .conftest import make_app

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "docs" / "QUERYING.md"]


def _oracle_variants() -> list[dict[str, Any]]:
    """Drafts, voids and a truncated invoice next to the documented detail, freight and a credit memo."""
    def variant(new_id: str, **changes: Any) -> dict[str, Any]:
        d = copy.deepcopy(docs.oracle_detail())
        d.update(CustomerTransactionId=new_id, TransactionNumber=f"N{new_id}", **changes)
        for n, inst in enumerate(d["receivablesInvoiceInstallments"]["items"]):
            inst["@context"]["key"] = f"{new_id}-{n}"
        for line in d["receivablesInvoiceLines"]["items"]:
            line["CustomerTransactionLineId"] = f"{new_id}-{line['CustomerTransactionLineId']}"
        return d

    truncated = variant("TRUNC1")
    truncated["receivablesInvoiceLines"]["items"] = truncated["receivablesInvoiceLines"]["items"][:3]
    truncated["receivablesInvoiceLines"]["hasMore"] = True
    return [docs.oracle_detail(), docs.oracle_freight_detail(), docs.oracle_credit_memo(),
            variant("DRAFT1", InvoiceStatus="Incomplete"), variant("VOID1", InvoiceStatus="Void"),
            variant("GBP1", InvoiceCurrencyCode="GBP"), truncated]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Simulators (small) plus the documented payloads and their variants (freight, credits, tax-only items), loaded, aged and published."""
    tmp = tmp_path_factory.mktemp("published_model")
    with ExitStack() as stack:
        sims = start_simulators(stack, size=25)
        blocks = {n: s.source_config() for n, s in sims.items()}
        blocks.update(docs.source_blocks({"ora_docs": "oracle_occ", "crm_docs": "crmcom", "swo_docs": "softwareone"}))
        app = make_app(tmp, blocks)
        for name in sims:
            run_source(app, name)
        docs.load(app, "ora_docs", _oracle_variants())
        docs.load(app, "crm_docs", [*docs.crmcom_invoices(), docs.crmcom_tax_only(),
                                    docs.crmcom_variant("I00000498", "REJ498", life_cycle_state="REJECTED", outstanding_amount=5),
                                    docs.crmcom_variant("I00000498", "CRN498", outstanding_amount=57,
                                                        type={"classification": "CREDIT_NOTE"})])
        docs.load(app, "swo_docs", [docs.softwareone_credit()])
        wh = Warehouse(app.warehouse)
        build_aging_snapshot(wh)
        publish(app, wh)
    return Path(app.warehouse.published_path)


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


# -- the docs' SQL ------------------------------------------------------------------------------
def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block of a Markdown text."""
    blocks, lang, body = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, body = line[3:].strip(), []
            else:
                blocks.append((lang, "\n".join(body)))
                lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def doc_sql_statements(path: Path) -> list[str]:
    """Every statement of the ```sql blocks and of the `duckdb ... -c "..."` commands of a Markdown file."""
    found: list[str] = []
    for lang, block in fenced_blocks(path.read_text()):
        if lang == "sql":
            body = "\n".join(line.split("--")[0] for line in block.splitlines())
            found += [s.strip() for s in body.split(";") if s.strip()]
        elif lang in ("bash", "sh", "shell", ""):
            found += [m.strip().rstrip(";") for m in re.findall(r'duckdb\b[^\n]*?-c\s+"([^"]+)"', block)]
    return found


def test_every_sql_example_of_readme_and_querying_runs_on_a_published_warehouse(published: Path) -> None:
    statements = {path.name: doc_sql_statements(path) for path in DOCS}
    assert len(statements["README.md"]) >= 4 and len(statements["QUERYING.md"]) >= 8, statements
    demo = [sql for _, sql in EXAMPLE_QUERIES]
    with duckdb.connect(str(published), read_only=True) as con:
        for name, sqls in [*statements.items(), ("demo.py", demo)]:
            for sql in sqls:
                try:
                    con.execute(sql).fetchall()
                except duckdb.Error as exc:
                    pytest.fail(f"{name}: example query fails: {exc}\n{sql}")


def test_no_doc_example_adds_amounts_across_currencies() -> None:
    """A sum of money in an example groups by currency_code (or reads a view that does)."""
    for path in DOCS:
        for sql in doc_sql_statements(path):
            if re.search(r"sum\((total_amount|balance_due|net_amount|tax_amount)\)", sql, flags=re.I):
                assert "currency_code" in sql, f"{path.name}: sums money without the currency:\n{sql}"
    for _, sql in EXAMPLE_QUERIES:
        assert "sum(" not in sql or "currency_code" in sql, sql


# -- the views ----------------------------------------------------------------------------------
def test_views_count_only_what_is_owed_or_earned_per_currency(published: Path) -> None:
    with duckdb.connect(str(published), read_only=True) as con:
        invoices = _rows(con, "SELECT * FROM invoices")
        counted = [i for i in invoices if i["status_category"] in ("open", "paid") and not i["is_deleted"]]
        assert {i["status_category"] for i in invoices} == {"draft", "open", "paid", "void"}
        assert any(i["document_type"] == "credit_memo" for i in counted)

        want: dict[tuple, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0), 0, 0])
        for i in counted:
            key = (i["source_name"], i["currency_code"], i["invoice_date"].replace(day=1) if i["invoice_date"] else None)
            want[key][0] += i["total_amount"]
            want[key][1] += i["freight_amount"]
            want[key][2] += i["is_truncated"]
            want[key][3] += i["document_type"] == "credit_memo"
        got = {(r["source_name"], r["currency_code"], r["invoice_month"]):
               [r["total_amount"], r["freight_amount"], r["truncated_invoices"], r["credit_memos"]]
               for r in _rows(con, "SELECT * FROM revenue_by_month")}
        assert got == {k: v for k, v in want.items()}
        truncated_month = next(i["invoice_date"].replace(day=1) for i in invoices if i["invoice_id"] == "TRUNC1")
        assert got[("ora_docs", "USD", truncated_month)][2] == 1

        open_items = _rows(con, "SELECT * FROM ar_open_items")
        ids = {(r["source_name"], r["invoice_id"]) for r in open_items}
        assert not ids & {("ora_docs", "DRAFT1"), ("ora_docs", "VOID1"), ("crm_docs", "REJ498")}
        credit = [r for r in open_items if (r["source_name"], r["invoice_id"]) in
                  {("ora_docs", "901999"), ("crm_docs", "CRN498"), ("swo_docs", "CRN-123-456-789")}]
        assert len(credit) == 3 and all(r["balance_due"] < 0 and r["document_type"] == "credit_memo" for r in credit)
        # aging nets credits in, per currency, and counts the truncated invoices it rests on
        per_currency = defaultdict(Decimal)
        for r in open_items:
            per_currency[(r["source_name"], r["currency_code"])] += r["balance_due"]
        aging = _rows(con, "SELECT source_name, currency_code, sum(balance_due) AS owed, sum(truncated_invoices) AS t "
                           "FROM ar_aging GROUP BY ALL")
        assert {(r["source_name"], r["currency_code"]): r["owed"] for r in aging} == dict(per_currency)
        assert {r["currency_code"] for r in aging if r["source_name"] == "ora_docs"} == {"USD", "GBP"}
        assert sum(r["t"] for r in aging if r["source_name"] == "ora_docs") == 1
        # the lifecycle's aging snapshot leaves drafts and voids out too and nets credits in
        snap = _rows(con, "SELECT source_name, currency_code, sum(balance_due) AS owed, sum(credit_memo_count) AS credits "
                          "FROM ar_aging_snapshot WHERE source_name = 'ora_docs' GROUP BY ALL")
        assert {(r["currency_code"], r["credits"]) for r in snap} == {("USD", 1), ("GBP", 0)}


# -- keys, comments, dictionary -----------------------------------------------------------------
def test_snapshot_declares_primary_keys_and_table_comments(published: Path) -> None:
    with duckdb.connect(str(published), read_only=True) as con:
        keys = {t: tuple(cols) for t, cols in con.execute(
            "SELECT table_name, constraint_column_names FROM duckdb_constraints() "
            "WHERE schema_name = 'main' AND constraint_type = 'PRIMARY KEY'").fetchall()}
        assert {t: keys.get(t) for t in CONFORMED_TABLES} == CONFORMED_KEYS
        missing = con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' "
                              "AND (comment IS NULL OR comment = '')").fetchall()
        assert missing == []
        views = con.execute("SELECT view_name FROM duckdb_views() WHERE schema_name = 'main' AND NOT internal "
                            "AND (comment IS NULL OR comment = '')").fetchall()
        assert views == []


def test_data_dictionary_documents_every_published_table_and_view_column(published: Path) -> None:
    text = (REPO / DEFAULT_PATH).read_text()
    sections: dict[str, set[str]] = {}
    for title, body in re.findall(r"^#{2,3} main\.(\w+)\n(.*?)(?=^#{2,3} |\Z)", text, flags=re.S | re.M):
        sections[title] = {m.group(1) for m in re.finditer(r"^\| `(\w+)` \| [^|]+ \| ([^|]*\S[^|]*) \|$", body, re.M)}
    bookkeeping = {(t, c) for t, c, _, _ in SNAPSHOT_BOOKKEEPING}
    with duckdb.connect(str(published), read_only=True) as con:
        columns = con.execute("SELECT table_name, column_name FROM duckdb_columns() WHERE schema_name = 'main' "
                               "AND database_name = current_database()").fetchall()
    undocumented = [(t, c) for t, c in columns
                    if (t, c) not in bookkeeping and c not in sections.get(t, set())]
    assert undocumented == []
    assert {"invoice_history", "ar_aging_snapshot", "ar_aging", "revenue_by_month"} <= set(sections)


# -- pandas ---------------------------------------------------------------------------------------
def _querying_python_blocks() -> list[str]:
    return [body for lang, body in fenced_blocks((REPO / "docs" / "QUERYING.md").read_text()) if lang == "python"]


def test_documented_pandas_path_keeps_exact_decimals(published: Path) -> None:
    pd = pytest.importorskip("pandas")
    (block,) = [b for b in _querying_python_blocks() if "types_mapper=pd.ArrowDtype" in b]
    scope: dict[str, Any] = {}
    exec(block.replace("data/published/warehouse.duckdb", str(published)), scope)  # noqa: S102 - the docs' own code
    invoices, owed = scope["invoices"], scope["owed"]
    assert str(invoices["total_amount"].dtype) == "decimal128(18, 4)[pyarrow]"
    assert isinstance(invoices["total_amount"].iloc[0], Decimal)
    with duckdb.connect(str(published), read_only=True) as con:
        exact = dict(((s, c), v) for s, c, v in con.execute(
            "SELECT source_name, currency_code, sum(balance_due) FROM invoices "
            "WHERE status_category IN ('open', 'paid') AND NOT is_deleted GROUP BY ALL").fetchall())
        floats = con.sql("SELECT total_amount FROM invoices LIMIT 1").df()["total_amount"]
    assert {k: Decimal(str(v)) for k, v in owed.items()} == exact
    assert all(isinstance(v, Decimal) for v in owed.to_list())
    assert floats.dtype == "float64"  # why the docs warn next to every .df()
    assert pd.ArrowDtype


def test_every_df_example_in_the_docs_carries_the_float_warning() -> None:
    for path in [*DOCS, *(REPO / "docs").glob("*.md")]:
        lines = path.read_text().splitlines()
        for n, line in enumerate(lines):
            if ".df()" in line and "`.df()`" not in line:
                context = "\n".join(lines[max(0, n - 3):n + 1])
                assert "float" in context and "WARNING" in context, f"{path.name}:{n + 1}: .df() without the warning"
