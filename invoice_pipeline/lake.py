"""The Parquet lake: one folder per table, hive-partitioned, replaced atomically, local or on an object store.

`parquet_dir` is a local path or a URI pyarrow understands (`s3://bucket/prefix`, `gs://...`,
`hdfs://...`; S3 endpoint and credentials come from the usual AWS_* environment variables, e.g.
AWS_ENDPOINT_URL for MinIO or any S3-compatible server). Files are written by pyarrow from Arrow
streams, so DECIMAL stays Parquet DECIMAL and TIMESTAMPTZ stays a UTC-adjusted timestamp.

Atomic replacement, so a reader never sees a half-written file or a mix of two versions:
- local: each version is written under `<root>/.versions/<table>/<version>/` and `<root>/<table>`
  is a relative symlink switched with one `os.replace`. The previous version is kept until the
  next publish, so a reader that listed it just before the switch can still read its files.
- object stores: every object appears atomically when its upload completes (a half-written object
  is never listed); the new version's files are written under new names first, then the previous
  version's files are deleted. A listing taken in between sees both versions: engines that need
  snapshot isolation on S3 should read the DuckDB snapshot or a table format (Iceberg/Delta).
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

VERSIONS_DIR = ".versions"  # '.'-prefixed: skipped by pyarrow, Spark and Hive discovery
ROW_GROUP = 128 * 1024
MAX_ROWS_PER_FILE = 2_000_000


def new_version() -> str:
    """Sortable, unique version id: UTC time to the microsecond plus a random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ") + "-" + uuid.uuid4().hex[:6]


def is_uri(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


@dataclass
class Lake:
    """Where the Parquet tables live and how one is replaced."""

    location: str

    def __post_init__(self) -> None:
        if is_uri(self.location):
            fs, root = pafs.FileSystem.from_uri(self.location)
            self.fs: pafs.FileSystem = fs
            self.root = root.rstrip("/")
            self.local = False
        else:
            path = self.location.removeprefix("file://")
            self.fs = pafs.LocalFileSystem()
            self.root = str(Path(path).absolute())
            self.local = True

    def table_path(self, name: str) -> str:
        """Where readers find table `name` ('invoices', 'agv/invoices'): a folder of the lake."""
        return f"{self.root}/{name}"

    def write_table(self, name: str, data: pa.RecordBatchReader, partition_by: list[str], version: str) -> int:
        """Write one table version and make it the current one; returns its row count."""
        if self.local:
            return self._write_local(name, data, partition_by, version)
        return self._write_remote(name, data, partition_by, version)

    # -- writing ---------------------------------------------------------------------------------
    def _write_files(self, base: str, data: pa.RecordBatchReader, partition_by: list[str], version: str) -> int:
        written: list[int] = []
        schema = data.schema
        partitioning = (
            ds.partitioning(pa.schema([schema.field(c) for c in partition_by]), flavor="hive") if partition_by else None
        )
        ds.write_dataset(
            data, base, filesystem=self.fs, format="parquet", partitioning=partitioning,
            basename_template=f"part-{version}-{{i}}.parquet", existing_data_behavior="overwrite_or_ignore",
            max_rows_per_file=MAX_ROWS_PER_FILE, min_rows_per_group=min(ROW_GROUP, MAX_ROWS_PER_FILE),
            max_rows_per_group=ROW_GROUP, create_dir=self.local,  # object stores need no folder markers
            file_visitor=lambda f: written.append(f.metadata.num_rows if f.metadata is not None else 0),
        )
        rows = sum(written)
        if not written:
            # An empty table is still a folder with its schema, so readers get columns, not an error.
            empty_schema = pa.schema([f for f in schema if f.name not in partition_by])
            self.fs.create_dir(base, recursive=True)
            with self.fs.open_output_stream(f"{base}/part-{version}-empty.parquet") as out:
                pq.write_table(empty_schema.empty_table(), out)
        return rows

    def _write_local(self, name: str, data: pa.RecordBatchReader, partition_by: list[str], version: str) -> int:
        root = Path(self.root)
        versions = root / VERSIONS_DIR / name
        target = versions / version
        rows = self._write_files(str(target), data, partition_by, version)
        final = root / name
        final.parent.mkdir(parents=True, exist_ok=True)
        link = final.with_name(f".{final.name}.link-{uuid.uuid4().hex[:6]}")
        os.symlink(os.path.relpath(target, final.parent), link, target_is_directory=True)
        if final.exists() and not final.is_symlink():  # a folder written by an older release: once
            shutil.rmtree(final)
        os.replace(link, final)  # the switch: readers resolve the old or the new version
        _prune(versions, keep={target.name, _previous(versions, target.name)})
        return rows

    def _write_remote(self, name: str, data: pa.RecordBatchReader, partition_by: list[str], version: str) -> int:
        base = self.table_path(name)
        old = [
            info.path for info in self.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True, recursive=True))
            if info.type == pafs.FileType.File
        ]
        rows = self._write_files(base, data, partition_by, version)
        stale = [p for p in old if f"part-{version}-" not in p.rsplit("/", 1)[-1]]
        for path in stale:
            self.fs.delete_file(path)
        return rows


def _previous(versions: Path, current: str) -> str:
    """The newest version older than `current` (kept for readers that listed it just before the switch)."""
    older = sorted(p.name for p in versions.iterdir() if p.name < current)
    return older[-1] if older else ""


def _prune(versions: Path, keep: set[str]) -> None:
    for entry in versions.iterdir():
        if entry.name not in keep:
            shutil.rmtree(entry, ignore_errors=True)
