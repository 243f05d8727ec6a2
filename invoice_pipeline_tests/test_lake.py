"""The lake's Parquet writer: hive folders, row groups, file size, bounded memory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from invoice_pipeline import lake as lake_module
from invoice_pipeline.lake import HIVE_NULL, Lake

SCHEMA = pa.schema([("source_name", pa.string()), ("invoice_month", pa.string()), ("n", pa.int64()),
                    ("amount", pa.decimal128(18, 4))])
HIVE = ds.partitioning(pa.schema([("source_name", pa.string()), ("invoice_month", pa.string())]), flavor="hive")


@pytest.fixture(autouse=True)
def small_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Row groups of 10 rows and files of 2 groups, so a few hundred rows exercise every boundary."""
    monkeypatch.setattr(lake_module, "ROW_GROUP", 10)
    monkeypatch.setattr(lake_module, "ROW_GROUPS_PER_FILE", 2)


def rows(keys: list[tuple[str | None, str | None]], per_key: int) -> list[dict]:
    out, n = [], 0
    for source, month in keys:
        for _ in range(per_key):
            out.append({"source_name": source, "invoice_month": month, "n": n, "amount": Decimal(n) / 100})
            n += 1
    return out


def reader(data: list[dict], batch_rows: int) -> pa.RecordBatchReader:
    batches = [pa.RecordBatch.from_pylist(data[i:i + batch_rows], schema=SCHEMA) for i in range(0, len(data), batch_rows)]
    return pa.RecordBatchReader.from_batches(SCHEMA, iter(batches))


def published(lake: Lake, name: str, data: pa.RecordBatchReader, partition_by: list[str], version: str = "v1") -> int:
    """Write one table as a whole version and switch to it (what publish does for all its tables)."""
    rows = lake.write_table(name, data, partition_by, version)
    lake.switch(version)
    return rows


def read_back(folder: Path, partitioning: ds.Partitioning | str = HIVE) -> list[dict]:
    table = ds.dataset(str(folder), format="parquet", partitioning=partitioning).to_table()
    return sorted(table.select(SCHEMA.names).to_pylist(), key=lambda r: r["n"])


def test_sorted_input_gives_one_folder_per_partition_full_row_groups_and_bounded_files(tmp_path: Path) -> None:
    data = rows([("a", "2025-01"), ("a", "2025-02"), ("b", "2025-01")], per_key=47)
    lake = Lake(str(tmp_path / "lake"))
    assert published(lake, "t", reader(data, batch_rows=7), ["source_name", "invoice_month"]) == len(data)
    assert read_back(tmp_path / "lake" / "t") == data
    folders = sorted(p.parent.relative_to((tmp_path / "lake" / "t").resolve()).as_posix()
                     for p in (tmp_path / "lake" / "t").resolve().rglob("*.parquet"))
    # 47 rows per partition: files of at most 2 groups of 10 -> 3 files (20, 20, 7) per partition
    assert folders == sorted(["source_name=a/invoice_month=2025-01"] * 3 + ["source_name=a/invoice_month=2025-02"] * 3
                             + ["source_name=b/invoice_month=2025-01"] * 3)
    for file in (tmp_path / "lake" / "t").resolve().rglob("*.parquet"):
        meta = pq.ParquetFile(file).metadata
        groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        assert groups in ([10, 10], [7]), (file, groups)
        assert "source_name" not in pq.read_schema(file).names  # the folder holds it
        assert file.name.startswith("part-v1-")


def test_null_and_unusual_partition_values_round_trip(tmp_path: Path) -> None:
    data = rows([("a", None), ("a", "2025/01 x%"), ("b c", "2025-01")], per_key=5)
    published(Lake(str(tmp_path)), "t", reader(data, batch_rows=4), ["source_name", "invoice_month"])
    assert read_back(tmp_path / "t") == data
    assert (tmp_path / "t" / "source_name=a" / f"invoice_month={HIVE_NULL}").is_dir()


def test_a_partition_seen_again_gets_another_file_not_an_overwrite(tmp_path: Path) -> None:
    data = rows([("a", "m1"), ("b", "m1"), ("a", "m1")], per_key=3)
    published(Lake(str(tmp_path)), "t", reader(data, batch_rows=100), ["source_name", "invoice_month"])
    assert read_back(tmp_path / "t") == data
    assert len(list((tmp_path / "t" / "source_name=a" / "invoice_month=m1").iterdir())) == 2


def test_unpartitioned_table_and_empty_table(tmp_path: Path) -> None:
    data = rows([("a", "m1")], per_key=25)
    lake = Lake(str(tmp_path))
    assert lake.write_table("flat", reader(data, batch_rows=6), [], "v1") == 25
    assert lake.write_table("empty", reader([], batch_rows=6), ["source_name"], "v1") == 0
    lake.switch("v1")
    assert sorted(ds.dataset(str(tmp_path / "flat")).to_table().to_pylist(), key=lambda r: r["n"]) == data
    empty = ds.dataset(str(tmp_path / "empty"), format="parquet")
    assert empty.count_rows() == 0 and empty.schema.field("amount").type == pa.decimal128(18, 4)


def test_memory_is_one_row_group_not_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer never holds a full row group's worth of rows unwritten, however long the input."""
    seen: list[int] = []
    original = lake_module._PartitionFiles.write

    def spy(self, partition: str, batch: pa.RecordBatch) -> None:
        original(self, partition, batch)
        seen.append(self._pending_rows)

    data = rows([("a", "m1")], per_key=500)

    def batches() -> Iterator[pa.RecordBatch]:
        for i in range(0, len(data), 3):
            yield pa.RecordBatch.from_pylist(data[i:i + 3], schema=SCHEMA)

    monkeypatch.setattr(lake_module._PartitionFiles, "write", spy)
    published(Lake(str(tmp_path)), "t", pa.RecordBatchReader.from_batches(SCHEMA, batches()), ["source_name"])
    assert len(seen) > 100 and max(seen) < 10
    assert read_back(tmp_path / "t", partitioning="hive") == data


# -- versions: one switch for every table, stable paths, clean-up -----------------------------------
def test_a_version_is_invisible_until_switched_then_every_table_changes_at_once(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    one, two = rows([("a", "m1")], per_key=3), rows([("a", "m1")], per_key=5)
    for name in ("t", "u", "src/raw"):
        lake.write_table(name, reader(one, batch_rows=10), [], "v1")
    lake.switch("v1")
    for name in ("t", "u", "src/raw"):
        lake.write_table(name, reader(two, batch_rows=10), [], "v2")
        # written, not switched: readers of the stable paths still see v1 in full
        assert all(ds.dataset(str(tmp_path / n)).count_rows() == 3 for n in ("t", "u", "src/raw"))
    lake.switch("v2")
    assert all(ds.dataset(str(tmp_path / n)).count_rows() == 5 for n in ("t", "u", "src/raw"))
    # the stable paths are links into _current, never switched themselves; _current is the one switch
    assert os.readlink(tmp_path / "t") == "_current/t" and os.readlink(tmp_path / "src") == "_current/src"
    assert os.readlink(tmp_path / "_current") == "_v/v2" and lake.current() == "v2"


def test_previous_version_kept_older_and_unfinished_ones_removed(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    for version in ("v1", "v2", "v3"):
        lake.write_table("t", reader(rows([("a", "m1")], per_key=2), batch_rows=10), [], version)
        lake.switch(version)
    assert sorted(p.name for p in (tmp_path / "_v").iterdir()) == ["v2", "v3"]
    lake.write_table("t", reader(rows([("a", "m1")], per_key=2), batch_rows=10), [], "v4")  # killed before its switch
    (tmp_path / ".t.link-abc123").symlink_to("_current/t")  # a link left by a kill inside the switch
    lake.clean_up()
    assert sorted(p.name for p in (tmp_path / "_v").iterdir()) == ["v2", "v3"]
    assert not list(tmp_path.glob(".*"))


def test_a_table_gone_from_the_new_version_loses_its_stable_path(tmp_path: Path) -> None:
    """E.g. a dropped source: its folder must not dangle (or be read from an old version)."""
    lake = Lake(str(tmp_path))
    for name in ("t", "gone/raw"):
        lake.write_table(name, reader(rows([("a", "m1")], per_key=2), batch_rows=10), [], "v1")
    lake.switch("v1")
    lake.write_table("t", reader(rows([("a", "m1")], per_key=2), batch_rows=10), [], "v2")
    lake.switch("v2")
    assert (tmp_path / "t").exists() and not (tmp_path / "gone").is_symlink() and not (tmp_path / "gone").exists()


def test_the_layout_of_earlier_releases_is_taken_over(tmp_path: Path) -> None:
    """Per-table symlinks into .versions/ (and source folders of such links), or plain folders: replaced
    by stable links into _current at the first switch, the old versions removed."""
    old = tmp_path / ".versions" / "t" / "v0"
    old.mkdir(parents=True)
    (tmp_path / "t").symlink_to(".versions/t/v0", target_is_directory=True)
    (tmp_path / ".versions" / "src" / "raw" / "v0").mkdir(parents=True)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "raw").symlink_to("../.versions/src/raw/v0", target_is_directory=True)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "stale.parquet").write_bytes(b"not parquet")
    lake = Lake(str(tmp_path))
    data = rows([("a", "m1")], per_key=4)
    for name in ("t", "src/raw", "plain"):
        lake.write_table(name, reader(data, batch_rows=10), [], "v1")
    lake.switch("v1")
    for name in ("t", "src/raw", "plain"):
        assert ds.dataset(str(tmp_path / name)).count_rows() == 4, name
    assert os.readlink(tmp_path / "src") == "_current/src" and os.readlink(tmp_path / "plain") == "_current/plain"
    assert not (tmp_path / ".versions").exists() and not list(tmp_path.glob(".*"))
