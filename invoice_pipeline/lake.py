"""The Parquet lake: hive-partitioned tables, each publish a whole new version switched in one step.

`parquet_dir` is a local path or a URI pyarrow understands (`s3://bucket/prefix`, `gs://...`,
`hdfs://...`; S3 endpoint and credentials come from the usual AWS_* environment variables, e.g.
AWS_ENDPOINT_URL for MinIO or any S3-compatible server). Files are written by pyarrow from Arrow
streams, so DECIMAL stays Parquet DECIMAL and TIMESTAMPTZ stays a UTC-adjusted timestamp.

Layout: every publish writes all its tables under `<root>/_v/<version>/<table>/` (the version is
the snapshot's snapshot_id), then makes that version current in ONE step, so a reader never sees
some tables of one publish and some of another, and a crash at any point leaves the old or the new
lake whole:
- local: `<root>/_current` is a relative symlink to `_v/<version>`, replaced with one `os.replace`.
  The paths analysts use, `<root>/<table>` and `<root>/<source>` (docs/QUERYING.md), are symlinks
  into `_current/`, created once and never switched: they always read the current version. A
  reader that reads several tables and must not straddle a publish resolves `_current` once.
- object stores (no symlinks, no atomic rename of a prefix): `<root>/_current.json`, one object
  written last (a single PUT is atomic), names the current version and each table's prefix.
  Readers follow it; objects under `_v/<version>/` never change once the manifest names them.
The current version and the one before it are kept (a reader that resolved the previous one just
before a switch can still read it); older versions, versions never switched to (a crashed or failed
publish) and leftovers of earlier layouts are removed by `clean_up` at the start of each publish.
"""

from __future__ import annotations

import json
import logging
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

from invoice_pipeline.testpoints import pause_point

log = logging.getLogger("invoice_pipeline.lake")

VERSIONS_DIR = "_v"  # '_'-prefixed: skipped by pyarrow, Spark and Hive discovery, and no source or table name
CURRENT = "_current"  # local: the symlink to the current version
MANIFEST = "_current.json"  # object stores: the current version, written last
COMPLETE = "_COMPLETE"  # written into a version once all its tables are: only such versions are kept as previous
LEGACY_VERSIONS_DIR = ".versions"  # per-table versions of earlier releases (each table switched on its own)
KEEP_VERSIONS = 2  # the current one and the one before it
ROW_GROUP = 128 * 1024
ROW_GROUPS_PER_FILE = 16  # files of up to ~2M rows
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"  # what Hive, Spark, pyarrow and DuckDB read as NULL
# Tests only (tests/test_lake_switch.py): pause at a named point so a test can SIGKILL a real run there.
def new_version() -> str:
    """Sortable, unique version id: UTC time to the microsecond plus a random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ") + "-" + uuid.uuid4().hex[:6]


def is_uri(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


@dataclass
class Lake:
    """Where the Parquet tables live, how a version is written, switched to and cleaned up."""

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
        self._written: dict[str, list[str]] = {}  # version -> tables written into it by this object

    def table_path(self, name: str) -> str:
        """Where readers find table `name` ('invoices', 'agv/invoices') locally: a stable path into the current version."""
        return f"{self.root}/{name}"

    def version_path(self, version: str, name: str = "") -> str:
        return f"{self.root}/{VERSIONS_DIR}/{version}" + (f"/{name}" if name else "")

    def write_table(self, name: str, data: pa.RecordBatchReader, partition_by: list[str], version: str) -> int:
        """Write table `name` into `version` (not yet visible to readers: see switch); returns its row count."""
        rows = self._write_files(self.version_path(version, name), data, partition_by, version)
        self._written.setdefault(version, []).append(name)
        pause_point(f"lake_write:{name}")
        return rows

    # -- the current version ---------------------------------------------------------------------
    def current(self) -> str | None:
        """The version readers see now (None: nothing published in this layout yet)."""
        if self.local:
            try:
                return Path(os.readlink(Path(self.root) / CURRENT)).name
            except OSError:
                return None
        try:
            with self.fs.open_input_stream(f"{self.root}/{MANIFEST}") as f:
                return json.loads(f.read())["version"]
        except (OSError, ValueError, KeyError):
            return None

    def switch(self, version: str) -> None:
        """Make `version` (every table this object wrote into it) what readers see, in one step."""
        tables = sorted(self._written.get(version, []))
        top = sorted({name.split("/")[0] for name in tables})
        self._touch(f"{self.version_path(version)}/{COMPLETE}")
        pause_point("lake_switch")
        if self.local:
            root = Path(self.root)
            link = root / f".{CURRENT}.link-{uuid.uuid4().hex[:6]}"
            os.symlink(f"{VERSIONS_DIR}/{version}", link, target_is_directory=True)
            os.replace(link, root / CURRENT)  # THE switch: every table at once
            fsync_dir(root)
            self._stable_links(top)
        else:
            manifest = {"version": version, "published_at": datetime.now(UTC).isoformat(),
                        "tables": {name: f"{VERSIONS_DIR}/{version}/{name}" for name in tables}}
            with self.fs.open_output_stream(f"{self.root}/{MANIFEST}") as out:  # THE switch: one PUT
                out.write(json.dumps(manifest, indent=1).encode())
            self._remove_legacy_remote(top)
        pause_point("lake_switched")
        self._prune()

    def discard(self, version: str) -> None:
        """Remove a version that was never switched to (a failed publish)."""
        if version != self.current():
            self._delete_dir(self.version_path(version))

    def clean_up(self) -> None:
        """Remove what a killed or failed publish left: versions never switched to, temporary links,
        and versions older than the previous one. Call only while no other publish writes (publish's lock)."""
        if self.local:
            root = Path(self.root)
            for leftover in [*root.glob(".*.link-*"), *root.glob(".*.old-*")]:
                if leftover.is_symlink() or leftover.is_file():
                    leftover.unlink(missing_ok=True)
                else:
                    shutil.rmtree(leftover, ignore_errors=True)
            if (root / CURRENT).is_symlink():
                self._stable_links(sorted(self._entries(self.version_path(self.current() or "-"))))
        self._prune()

    # -- helpers ---------------------------------------------------------------------------------
    def _entries(self, base: str) -> list[str]:
        """Names directly under `base` (tables and source folders of a version), markers aside."""
        infos = self.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        return [i.base_name for i in infos if i.type == pafs.FileType.Directory and not i.base_name.startswith(("_", "."))]

    def _touch(self, path: str) -> None:
        with self.fs.open_output_stream(path) as out:
            out.write(b"")

    def _delete_dir(self, path: str) -> None:
        try:
            if self.local:
                shutil.rmtree(path, ignore_errors=True)
            else:
                self.fs.delete_dir(path)
        except (OSError, FileNotFoundError):
            log.warning("lake: could not remove %s (removed at the next publish)", path, exc_info=True)

    def _versions(self) -> list[tuple[str, bool]]:
        """(version, complete) of every version folder, oldest first."""
        base = f"{self.root}/{VERSIONS_DIR}"
        infos = self.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        names = sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)
        return [(n, self.fs.get_file_info(f"{base}/{n}/{COMPLETE}").type == pafs.FileType.File) for n in names]

    def _prune(self) -> None:
        """Keep the current version and the newest complete one before it; remove the rest."""
        current = self.current()
        versions = self._versions()
        keep = {current} if current else set()
        if current:
            older = [v for v, complete in versions if complete and v < current]
            keep |= set(older[-(KEEP_VERSIONS - 1):]) if KEEP_VERSIONS > 1 else set()
        for version, _ in versions:
            if version not in keep:
                self._delete_dir(self.version_path(version))

    def _stable_links(self, names: list[str]) -> None:
        """`<root>/<name>` -> `_current/<name>` for every top-level entry of the current version (created
        once, never switched), replacing what earlier layouts left there; links to names the current
        version no longer has (a dropped source) are removed."""
        root = Path(self.root)
        for name in names:
            path, target = root / name, f"{CURRENT}/{name}"
            if path.is_symlink() and os.readlink(path) == target:
                continue
            link = root / f".{name}.link-{uuid.uuid4().hex[:6]}"
            os.symlink(target, link, target_is_directory=True)
            if path.is_dir() and not path.is_symlink():  # a real folder of an earlier release: moved aside first
                aside = root / f".{name}.old-{uuid.uuid4().hex[:6]}"
                os.rename(path, aside)
                os.replace(link, path)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.replace(link, path)  # a symlink of an earlier release: switched in one rename
        for path in root.iterdir():
            if path.is_symlink() and os.readlink(path).startswith(f"{CURRENT}/") and not path.exists():
                path.unlink()
        if (root / LEGACY_VERSIONS_DIR).is_dir():
            shutil.rmtree(root / LEGACY_VERSIONS_DIR, ignore_errors=True)

    def _remove_legacy_remote(self, names: list[str]) -> None:
        """Objects an earlier release wrote straight under `<root>/<table>/`: stale once the manifest exists."""
        for name in names:
            if self.fs.get_file_info(f"{self.root}/{name}").type == pafs.FileType.Directory:
                self._delete_dir(f"{self.root}/{name}")

    # -- writing ---------------------------------------------------------------------------------
    def _write_files(self, base: str, data: pa.RecordBatchReader, partition_by: list[str], version: str) -> int:
        """Stream `data` into hive-partitioned Parquet files under `base`; returns the row count.

        Hand-rolled rather than `pyarrow.dataset.write_dataset`, which queues up to 64M rows when
        encoding is slower than reading and keeps every open partition's unfinished row group, so its
        memory grew with the warehouse (benchmarks/RESULTS.md, addendum 3). Here memory is one row
        group. Input sorted by the partition columns (publish sorts) gives one file per partition.
        """
        schema = data.schema
        files = _PartitionFiles(self, base, pa.schema([f for f in schema if f.name not in partition_by]), version)
        try:
            for batch in data:
                for partition, rows in _partition_runs(batch, partition_by):
                    files.write(partition, rows)
        except BaseException:
            files.abandon()  # the version is never switched to; clean_up removes it
            raise
        files.close()
        if not files.rows:
            # An empty table is still a folder with its schema, so readers get columns, not an error.
            self.fs.create_dir(base, recursive=True)
            with self.fs.open_output_stream(f"{base}/part-{version}-empty.parquet") as out:
                pq.write_table(files.schema.empty_table(), out)
        return files.rows


def fsync_dir(path: Path) -> None:
    """Make a rename in this folder durable (a crash right after must not bring the old name back)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
