from __future__ import annotations

from pathlib import Path

from invoice_pipeline.dictionary import DEFAULT_PATH, write_dictionary

REPO = Path(__file__).resolve().parents[1]


def test_committed_data_dictionary_is_current(tmp_path: Path) -> None:
    fresh = write_dictionary(tmp_path / "dd.md").read_text()
    assert "| `total_amount` | DECIMAL(18,4) |" in fresh and "main.ar_aging" in fresh
    assert (REPO / DEFAULT_PATH).read_text() == fresh, "run `invoice-pipeline dictionary` and commit docs/DATA_DICTIONARY.md"
