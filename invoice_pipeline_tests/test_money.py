"""Amount conversion limits: each column kind accepts exactly what its warehouse DECIMAL holds."""

from __future__ import annotations

from decimal import Decimal

import duckdb
import pytest

from invoice_pipeline.conformed import MONEY_T, QTY_T, RATE_T
from invoice_pipeline.money import MONEY, QUANTITY, RATE, MappingError, Scale, to_decimal, to_int


@pytest.mark.parametrize(("scale", "sql_type"), [(MONEY, MONEY_T), (QUANTITY, QTY_T), (RATE, RATE_T)])
def test_each_kind_takes_the_largest_value_its_column_holds_and_no_more(scale: Scale, sql_type: str) -> None:
    largest = scale.limit - scale.places  # e.g. 99999999999999.9999 for DECIMAL(18,4)
    assert to_decimal(str(largest), "x", scale) == largest
    assert to_decimal(str(-largest), "x", scale) == -largest
    # The warehouse column really holds it, and one unit of the last place more does not fit.
    assert duckdb.connect().execute(f"SELECT '{largest}'::{sql_type}").fetchone()[0] == largest
    with pytest.raises(duckdb.ConversionException):
        duckdb.connect().execute(f"SELECT '{scale.limit}'::{sql_type}").fetchone()
    with pytest.raises(MappingError, match="too large for its column"):
        to_decimal(str(scale.limit), "x", scale)
    # The cache never lends one kind's answer to another (quantities and rates share their places).
    for other in (MONEY, QUANTITY, RATE):
        if other.limit <= largest:
            with pytest.raises(MappingError):
                to_decimal(str(largest), "x", other)


def test_a_quantity_of_two_million_is_a_quantity_not_an_error() -> None:
    assert to_decimal("2000000", "Quantity", QUANTITY) == Decimal("2000000.000000")
    with pytest.raises(MappingError, match="TaxRate: '2000000' is too large"):
        to_decimal("2000000", "TaxRate", RATE)


def test_integers_beyond_the_warehouse_integer_are_the_records_error() -> None:
    assert to_int(str(2**31 - 1), "LineNumber") == 2**31 - 1 and to_int(-(2**31), "LineNumber") == -(2**31)
    for value in (str(2**31), 2**31, float(2**40), -(2**31) - 1):
        with pytest.raises(MappingError, match="LineNumber: .* too large for its column"):
            to_int(value, "LineNumber")
    with pytest.raises(MappingError, match="not an integer"):
        to_int(float("inf"), "LineNumber")
