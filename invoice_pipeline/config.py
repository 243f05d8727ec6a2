"""The YAML configuration (README, "Running against real APIs"): loading, ${VAR} expansion and validation.

Every error names the key it is about; secret values are pydantic SecretStr and never printed.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlparse

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from invoice_pipeline.errors import ConfigError
from invoice_pipeline.source_types import known_types, source_class
from invoice_pipeline.timeutil import parse_duration, parse_timestamp

DEFAULT_CONFIG_FILE = "invoice_pipeline.yaml"
CONFIG_ENV_VAR = "INVOICE_PIPELINE_CONFIG"
SOURCE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
# Schema names DuckDB resolves specially (catalogs or built-in schemas): a source cannot be one.
RESERVED_NAMES = frozenset({"main", "temp", "system", "memory", "information_schema", "pg_catalog"})
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _duration(value: Any) -> timedelta:
    return value if isinstance(value, timedelta) else parse_duration(value)


def _aware_timestamp(value: Any) -> datetime:
    if isinstance(value, datetime):
        return parse_timestamp(value.isoformat())
    return parse_timestamp(str(value))


def _optional_duration(value: Any) -> timedelta | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    return _duration(value)


Duration = Annotated[timedelta, BeforeValidator(_duration)]
OptionalDuration = Annotated[timedelta | None, BeforeValidator(_optional_duration)]
UtcTimestamp = Annotated[datetime, BeforeValidator(_aware_timestamp)]


class SourceConfig(BaseModel):
    """Keys every source type accepts; each type subclasses it with its own (credentials etc.)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # The keys an operator checks when the API refuses the login (named in that error message).
    credential_keys: ClassVar[tuple[str, ...]] = ()

    type: str
    base_url: str
    start_date: UtcTimestamp
    lookback: Duration = timedelta(minutes=10)
    page_size: int | None = Field(default=None, ge=1)
    concurrency: int = Field(default=8, ge=1, le=64)
    timeout: Duration = timedelta(seconds=30)
    max_retries: int = Field(default=5, ge=0, le=20)
    batch_size: int = Field(default=500, ge=1, le=100_000)  # invoices per committed batch (memory is bounded by it)
    # processes that map and flatten batches beside the one extracting and writing (0: none)
    prepare_processes: int = Field(default=2, ge=0, le=16)
    schedule: str = "0 * * * *"  # cron of the incremental run in Dagster (hourly by default)
    max_staleness: Duration = timedelta(days=1)  # freshness check: the cursor may not be older than this
    # lifecycle (docs/LIFECYCLE.md): re-poll of open invoices and deletion reconciliation
    # Open invoices due (or issued) longer ago than this are not re-polled; none (the default): every
    # open invoice, since the oldest debts are the ones collections chase.
    repoll_horizon: OptionalDuration = None
    repoll_schedule: str | None = None  # cron; unset: re-poll after every incremental run
    reconcile_schedule: str = "0 3 * * *"  # cron of the deletion reconciliation, or "always" (every run)
    reconcile_max_deleted_share: float = Field(default=0.5, gt=0, le=1)  # refuse to mark more as deleted
    # Schema drift (docs/TOOLING.md): "freeze" makes fields new in a payload fail the blocking schema_drift check.
    schema_contract: Literal["evolve", "freeze"] = "evolve"

    @field_validator("schedule", "repoll_schedule", "reconcile_schedule")
    @classmethod
    def _valid_cron(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or (value == "always" and info.field_name == "reconcile_schedule"):
            return value
        # the same parser the Dagster schedule will use (dagster is a hard dependency anyway)
        from dagster._utils.schedules import is_valid_cron_string

        if not is_valid_cron_string(value):
            raise ValueError(f"not a valid cron expression: {value!r}")
        return value

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):  # 0 would fail later in the HTTP layer with a bare ValueError
            raise ValueError(f"must be longer than 0s (got {value.total_seconds():g}s)")
        return value

    @field_validator("base_url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"not an http(s) URL: {value!r}")
        return value.rstrip("/")

    def secrets(self) -> list[str]:
        """Secret values to scrub from any message or log line."""
        return [v.get_secret_value() for v in self.__dict__.values() if isinstance(v, SecretStr) and v.get_secret_value()]


class IcebergConfig(BaseModel):
    """`warehouse.iceberg` (docs/ICEBERG.md): a pyiceberg SQL catalog and where the data files go.

    catalog_uri is a SQLAlchemy URL (sqlite:///path for one machine, postgresql+psycopg2://... for
    many); a password goes in through ${VAR} and stays a SecretStr. S3 credentials come from the
    environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), never from the file.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    catalog_uri: SecretStr
    warehouse: str  # a local folder or s3://bucket/prefix
    catalog_name: str = Field(default="invoice_pipeline", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    s3_endpoint: str | None = None  # an S3-compatible endpoint (MinIO, a local moto server)
    s3_region: str | None = None
    commit_retries: int = Field(default=20, ge=0, le=1000)  # optimistic-commit conflicts retried per batch


class WarehouseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # duckdb (default): one DuckDB file behind a writer lock; iceberg: Iceberg tables that many
    # processes on many machines write at once (docs/ICEBERG.md), configured in `iceberg`.
    backend: Literal["duckdb", "iceberg"] = "duckdb"
    iceberg: IcebergConfig | None = None
    duckdb_path: Path = Path("data/warehouse.duckdb")
    published_path: Path = Path("data/published/warehouse.duckdb")
    parquet_dir: str = "data/parquet"
    # A run keeps the writer lock and one connection across batches for up to this long, then hands
    # it over: opening a connection per batch costs a checkpoint each time (most of the write time).
    writer_turn_seconds: float = Field(default=10.0, gt=0)
    # How long a run waits for another run's writer lock before it fails, saying who holds it.
    lock_timeout: Duration = timedelta(hours=1)

    @field_validator("lock_timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than 0s")
        return value
    # DuckDB's buffer pool of the pipeline's own connections (DuckDB's default is 80% of the RAM).
    memory_limit: str = Field(default="256MB", pattern=r"^\s*\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$")

    @model_validator(mode="after")
    def _iceberg_configured(self) -> WarehouseConfig:
        if self.backend == "iceberg" and self.iceberg is None:
            raise ValueError("backend 'iceberg' needs an 'iceberg' block (catalog_uri, warehouse)")
        return self


class AlertsConfig(BaseModel):
    """Optional top-level `alerts:` (docs/TOOLING.md, "Alerts"): a Slack-compatible webhook whose URL
    is read from the environment variable named here (the URL holds a token: never in the file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    webhook_url_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    on_run_failure: bool = True
    on_blocking_check_failure: bool = True
    timeout: Duration = timedelta(seconds=10)


class AppConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    warehouse: WarehouseConfig = WarehouseConfig()
    sources: dict[str, SourceConfig]
    alerts: AlertsConfig | None = None

    def secrets(self) -> list[str]:
        return [s for src in self.sources.values() for s in src.secrets()]


def expand_env(value: Any, path: str = "") -> Any:
    """Replace ${VAR} in every string; a missing variable is an error naming it and the key."""
    if isinstance(value, dict):
        return {k: expand_env(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):

        def substitute(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in os.environ:
                raise ConfigError(f"config key '{path}': environment variable {name} is not set")
            return os.environ[name]

        return _VAR.sub(substitute, value)
    return value


def _format_validation_error(err: ValidationError, prefix: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        # pydantic's input echo could contain a secret: report the key and the rule only.
        lines.append(f"config key '{key}': {e['msg']}")
    return "; ".join(lines)


def parse_config(raw: Any) -> AppConfig:
    """Validate an already-parsed YAML document (after ${VAR} expansion)."""
    if not isinstance(raw, dict):
        raise ConfigError("config: the file must be a YAML mapping with 'warehouse' and 'sources'")
    unknown = set(raw) - {"warehouse", "sources", "alerts"}
    if unknown:
        raise ConfigError(f"config key '{sorted(unknown)[0]}': unknown key (expected 'warehouse', 'sources', 'alerts')")
    raw = expand_env(raw)
    sources_raw = raw.get("sources")
    if not isinstance(sources_raw, dict) or not sources_raw:
        raise ConfigError("config key 'sources': at least one source must be configured")
    sources: dict[str, SourceConfig] = {}
    for name, body in sources_raw.items():
        if not isinstance(name, str) or not SOURCE_NAME.match(name) or name in RESERVED_NAMES:
            raise ConfigError(
                f"config key 'sources.{name}': source names must match [a-z][a-z0-9_]{{0,39}} and not be one of "
                f"{', '.join(sorted(RESERVED_NAMES))}"
            )
        if not isinstance(body, dict):
            raise ConfigError(f"config key 'sources.{name}': expected a mapping of settings")
        type_name = body.get("type")
        if type_name not in known_types():
            raise ConfigError(
                f"config key 'sources.{name}.type': unknown source type {type_name!r} "
                f"(known: {', '.join(known_types())})"
            )
        try:
            sources[name] = source_class(type_name).config_model.model_validate(body)
        except ValidationError as err:
            raise ConfigError(_format_validation_error(err, f"sources.{name}")) from None
    try:
        warehouse = WarehouseConfig.model_validate(raw.get("warehouse") or {})
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, "warehouse")) from None
    check_warehouse_paths(warehouse)
    catalog = Path(warehouse.duckdb_path).stem  # DuckDB names the database after its file
    if catalog in sources:
        raise ConfigError(
            f"config key 'sources.{catalog}': a source may not be named like the warehouse file "
            f"({warehouse.duckdb_path}): DuckDB could not tell the schema from the database"
        )
    try:
        alerts = AlertsConfig.model_validate(raw["alerts"]) if raw.get("alerts") is not None else None
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, "alerts")) from None
    return AppConfig(warehouse=warehouse, sources=sources, alerts=alerts)


def _resolved(path: str | os.PathLike) -> Path:
    """Absolute, with symlinks, '..' and '~' resolved (as far as the path exists): two spellings of one file compare equal."""
    return Path(os.path.expanduser(str(path).removeprefix("file://"))).resolve()


def _file_family(path: Path) -> set[Path]:
    """A database file and the names written beside it: DuckDB's WAL and spill folder, our lock files."""
    return {path, path.with_name(path.name + ".wal"), path.with_name(path.name + ".tmp"),
            path.with_name(path.name + ".lock"), path.with_name(path.name + ".publish.lock")}


def check_warehouse_paths(warehouse: WarehouseConfig) -> None:
    """Refuse paths that overlap: a publish would overwrite the working database (its raw payloads,
    flattened tables, quarantine and run log) or the lake would write into or over a database file."""
    work, published = _resolved(warehouse.duckdb_path), _resolved(warehouse.published_path)
    if work == published:
        raise ConfigError(
            f"config keys 'warehouse.duckdb_path' and 'warehouse.published_path' name the same file ({work}): "
            "publishing would overwrite the working database; give the published snapshot its own path"
        )
    for a, a_key, b, b_key in ((work, "duckdb_path", published, "published_path"),
                               (published, "published_path", work, "duckdb_path")):
        if (b in _file_family(a) or b.is_relative_to(a.with_name(a.name + ".tmp"))
                or (b.parent == a.parent and b.name.startswith(f".{a.name}.tmp-"))):  # publish's temporary file
            raise ConfigError(
                f"config keys 'warehouse.{a_key}' and 'warehouse.{b_key}': {b} is a file the database at {a} "
                "writes beside itself (WAL, temporary or lock file); give each its own path"
            )
    if "://" in warehouse.parquet_dir and not warehouse.parquet_dir.startswith("file://"):
        return  # an object store (lake.is_uri): cannot overlap a local file
    lake = _resolved(warehouse.parquet_dir)
    for path, key in ((work, "duckdb_path"), (published, "published_path")):
        for member in _file_family(path):
            if lake == member or lake.is_relative_to(member) or member.is_relative_to(lake):
                raise ConfigError(
                    f"config keys 'warehouse.parquet_dir' and 'warehouse.{key}' overlap ({lake} and {path}): "
                    "the lake's folder must neither be, lie inside, nor contain a database file; "
                    "give parquet_dir a folder of its own"
                )


def _check_duplicate_keys(text: str, path: Path) -> None:
    """PyYAML silently keeps the last of two equal keys; a duplicate source name must fail instead."""

    class StrictLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"config {path}: key '{key}' appears twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass


def resolve_config_path(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get(CONFIG_ENV_VAR):
        return Path(os.environ[CONFIG_ENV_VAR])
    return Path(DEFAULT_CONFIG_FILE)


def load_config(path: str | os.PathLike | None = None) -> AppConfig:
    config_path = resolve_config_path(path)
    if not config_path.is_file():
        raise ConfigError(
            f"config file {config_path} not found: pass --config FILE, set ${CONFIG_ENV_VAR}, "
            f"or create {DEFAULT_CONFIG_FILE} (see README); 'invoice-pipeline demo' needs none"
        )
    text = config_path.read_text()
    try:
        _check_duplicate_keys(text, config_path)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config {config_path}: not valid YAML: {err}") from None
    return parse_config(raw)
