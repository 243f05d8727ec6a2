from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from invoice_pipeline.config import load_config, parse_config
from invoice_pipeline.errors import ConfigError

ORACLE = {
    "type": "oracle_occ",
    "base_url": "https://shop.example.com/",
    "username": "${OCC_USER}",
    "password": "${OCC_PASSWORD}",
    "start_date": "2024-01-01T00:00:00Z",
}


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCC_USER", "alice")
    monkeypatch.setenv("OCC_PASSWORD", "s3cret-password-value")


def test_valid_config_with_defaults_and_env_expansion() -> None:
    app = parse_config({"sources": {"oracle_us": ORACLE}})
    src = app.sources["oracle_us"]
    assert src.username == "alice"
    assert src.password.get_secret_value() == "s3cret-password-value"
    assert src.base_url == "https://shop.example.com"
    assert src.start_date == datetime(2024, 1, 1, tzinfo=UTC)
    assert src.lookback == timedelta(minutes=10)
    assert (src.concurrency, src.max_retries, src.timeout) == (8, 5, timedelta(seconds=30))
    assert str(app.warehouse.duckdb_path) == "data/warehouse.duckdb"
    assert "s3cret" not in repr(app) and "s3cret" not in str(src)


def test_durations_parse() -> None:
    app = parse_config({"sources": {"o": {**ORACLE, "lookback": "2h", "timeout": "500ms"}}})
    assert app.sources["o"].lookback == timedelta(hours=2)
    assert app.sources["o"].timeout == timedelta(milliseconds=500)


@pytest.mark.parametrize(
    ("change", "expected_key"),
    [
        ({"concurrency": "many"}, "sources.o.concurrency"),
        ({"colour": "blue"}, "sources.o.colour"),
        ({"base_url": "ftp://x"}, "sources.o.base_url"),
        ({"lookback": "soon"}, "sources.o.lookback"),
        ({"start_date": "yesterday"}, "sources.o.start_date"),
        ({"password": None}, "sources.o.password"),
        ({"type": "sap"}, "sources.o.type"),
    ],
)
def test_bad_values_name_the_key(change: dict, expected_key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"sources": {"o": {**ORACLE, **change}}})
    assert expected_key in str(err.value)
    assert "s3cret" not in str(err.value)


def test_missing_required_key() -> None:
    body = {k: v for k, v in ORACLE.items() if k != "username"}
    with pytest.raises(ConfigError, match=r"sources\.o\.username"):
        parse_config({"sources": {"o": body}})


def test_missing_env_var_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OCC_PASSWORD")
    with pytest.raises(ConfigError, match=r"OCC_PASSWORD.*|.*sources\.o\.password.*OCC_PASSWORD"):
        parse_config({"sources": {"o": ORACLE}})


@pytest.mark.parametrize("name", ["main", "temp", "system", "memory", "Oracle", "9x", "a" * 41, "has-dash"])
def test_invalid_source_names(name: str) -> None:
    with pytest.raises(ConfigError, match="source names must match"):
        parse_config({"sources": {name: ORACLE}})


def test_duplicate_source_name_in_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "sources:\n  dup:\n    type: oracle_occ\n    base_url: http://a\n    username: u\n    password: p\n"
        "    start_date: '2024-01-01T00:00:00Z'\n  dup:\n    type: oracle_occ\n    base_url: http://b\n"
        "    username: u\n    password: p\n    start_date: '2024-01-01T00:00:00Z'\n"
    )
    with pytest.raises(ConfigError, match="'dup' appears twice"):
        load_config(path)


def test_missing_file_and_env_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    path = tmp_path / "env.yaml"
    path.write_text("sources:\n  o:\n    type: oracle_occ\n    base_url: http://a\n    username: u\n    password: p\n    start_date: '2024-01-01'\n")
    monkeypatch.setenv("INVOICE_PIPELINE_CONFIG", str(path))
    assert list(load_config().sources) == ["o"]


def test_unknown_top_level_key_and_malformed_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'extra'"):
        parse_config({"sources": {"o": ORACLE}, "extra": 1})
    path = tmp_path / "bad.yaml"
    path.write_text("sources: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_source_named_like_the_warehouse_file_is_refused() -> None:
    with pytest.raises(ConfigError, match="sources.warehouse.*named like the warehouse file"):
        parse_config({"sources": {"warehouse": ORACLE}})
    assert "lake" in parse_config({"warehouse": {"duckdb_path": "x/lake_db.duckdb"}, "sources": {"lake": ORACLE}}).sources
