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
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

VERSIONS_DIR = ".versions"  # '.'-prefixed: skipped by pyarrow, Spark and Hive discovery
ROW_GROUP = 128 * 1024
ROW_GROUPS_PER_FILE = 16  # files of up to ~2M rows
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"  # what Hive, Spark, pyarrow and DuckDB read as NULL


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
        """Stream `data` into hive-partitioned Parquet files under `base`; returns the row count.

        Hand-rolled rather than `pyarrow.dataset.write_dataset`, which queues up to 64M rows when
        encoding is slower than reading and keeps every open partition's unfinished row group:
        publishing 200k invoices peaked at 1.1 GB in it. Here memory is one row group. Input sorted
        by the partition columns (publish sorts) gives one file per partition.
        """
        schema = data.schema
        files = _PartitionFiles(self, base, pa.schema([f for f in schema if f.name not in partition_by]), version)
        try:
            for batch in data:
                for partition, rows in _partition_runs(batch, partition_by):
                    files.write(partition, rows)
        except BaseException:
            files.abandon()  # the version is never switched to; its files are pruned or deleted later
            raise
        files.close()
        if not files.rows:
            # An empty table is still a folder with its schema, so readers get columns, not an error.
            self.fs.create_dir(base, recursive=True)
            with self.fs.open_output_stream(f"{base}/part-{version}-empty.parquet") as out:
                pq.write_table(files.schema.empty_table(), out)
        return files.rows

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


def _partition_runs(batch: pa.RecordBatch, partition_by: list[str]) -> Iterator[tuple[str, pa.RecordBatch]]:
    """Consecutive rows of one partition: ('source_name=a/invoice_month=2025-01', its rows without those columns)."""
    if not batch.num_rows:
        return
    if not partition_by:
        yield "", batch
        return
    data = batch.drop_columns(partition_by)
    columns = [pc.cast(batch.column(name), pa.string()) for name in partition_by]
    keys = pc.binary_join_element_wise(*(pc.fill_null(c, HIVE_NULL) for c in columns), "\x1f")
    changes = pc.indices_nonzero(pc.not_equal(keys.slice(1), keys.slice(0, len(keys) - 1))).to_pylist()
    starts = [0, *(i + 1 for i in changes)]
    for start, end in zip(starts, [*starts[1:], batch.num_rows]):
        values = [c[start].as_py() for c in columns]
        # Values escaped the way pyarrow's hive partitioning writes (and readers decode) them.
        path = "/".join(f"{n}={HIVE_NULL if v is None else quote(v, safe='')}" for n, v in zip(partition_by, values))
        yield path, data.slice(start, end - start)


class _PartitionFiles:
    """The open Parquet file of the current partition: full row groups written, the rest buffered."""

    def __init__(self, lake: Lake, base: str, schema: pa.Schema, version: str) -> None:
        self.lake, self.base, self.schema, self.version = lake, base, schema, version
        self.rows = 0
        self._partition: str | None = None
        self._writer: pq.ParquetWriter | None = None
        self._groups_in_file = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._files_of: dict[str, int] = {}  # partition -> files written (a partition seen again gets a new file)

    def write(self, partition: str, rows: pa.RecordBatch) -> None:
        if partition != self._partition:
            self._finish_file()
            self._partition = partition
        self._pending.append(rows)
        self._pending_rows += rows.num_rows
        self.rows += rows.num_rows
        if self._pending_rows >= ROW_GROUP:
            self._flush(final=False)

    def close(self) -> None:
        self._finish_file()

    def abandon(self) -> None:
        self._pending, self._pending_rows = [], 0
        self._close_writer()

    def _flush(self, final: bool) -> None:
        table = pa.Table.from_batches(self._pending, self.schema)
        while table.num_rows >= ROW_GROUP or (final and table.num_rows):
            group, table = table.slice(0, ROW_GROUP), table.slice(ROW_GROUP)
            self._file().write_table(group, row_group_size=ROW_GROUP)
            self._groups_in_file += 1
            if self._groups_in_file == ROW_GROUPS_PER_FILE:
                self._close_writer()
        self._pending, self._pending_rows = table.to_batches(), table.num_rows

    def _file(self) -> pq.ParquetWriter:
        if self._writer is None:
            folder = f"{self.base}/{self._partition}" if self._partition else self.base
            if self.lake.local:  # object stores need no folder markers
                self.lake.fs.create_dir(folder, recursive=True)
            n = self._files_of.get(self._partition, 0)
            self._files_of[self._partition] = n + 1
            path = f"{folder}/part-{self.version}-{n}.parquet"
            self._writer = pq.ParquetWriter(path, self.schema, filesystem=self.lake.fs)
        return self._writer

    def _finish_file(self) -> None:
        if self._pending_rows:
            self._flush(final=True)
        self._close_writer()

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer, self._groups_in_file = None, 0
