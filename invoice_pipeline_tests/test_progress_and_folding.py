"""Progress lines show % and ETA where the API tells the total (SoftwareOne); a flood of identical
warnings (Oracle invoices vanishing before their detail call) is folded into one line with a count."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from invoice_pipeline.http import HttpClient
from invoice_pipeline.logfold import fold_repeats
from invoice_pipeline.simulation import SimRequest, SimResponse
from invoice_pipeline.sources.base import ExtractStats, Window
from invoice_pipeline.sources.oracle_occ.client import OracleOccConfig, OracleOccSource
from invoice_pipeline.sources.oracle_occ.simulator import SIMULATOR_CLASS as OracleSim
from invoice_pipeline.sources.softwareone.client import SoftwareOneConfig, SoftwareOneSource
from invoice_pipeline.sources.softwareone.simulator import SIMULATOR_CLASS as SoftwareOneSim

ORACLE_LIST = "/ccstore/v1/selfservice/invoices"


def test_softwareone_progress_shows_percentage_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="invoice_pipeline")
    with SoftwareOneSim(size=120) as sim:
        source = SoftwareOneSource("swo", SoftwareOneConfig.model_validate({**sim.source_config(), "page_size": 25}))
        try:
            records = [r for batch in source.extract(Window(source.config.start_date, datetime.now(UTC))) for r in batch]
        finally:
            source.close()
    assert source.stats.expected_total == len(records) == 120
    progress = [r.getMessage() for r in caplog.records if "invoices/s" in r.getMessage()]
    assert any("120 invoices scanned of 120 (100%, ETA 0m00s)" in line for line in progress), progress


def test_progress_without_a_total_has_no_percentage() -> None:
    stats = ExtractStats(scanned=10)
    assert stats._share(2.0) == ""
    stats.expected_total = 40
    assert stats._share(2.0) == " of 40 (25%, ETA 0m06s)"


class _VanishingSim(OracleSim):
    """404 for the detail of every invoice in `gone`: deleted between the list and the detail call."""

    gone: frozenset[str] = frozenset()

    def handle(self, request: SimRequest) -> SimResponse:
        if request.path.startswith(f"{ORACLE_LIST}/") and request.path.rsplit("/", 1)[1] in self.gone:
            return SimResponse(404, {"errorCode": "00001404", "message": "No invoice found.", "status": "404"})
        return super().handle(request)


def test_many_vanished_invoices_log_three_lines_and_one_summary(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="invoice_pipeline")
    with _VanishingSim(size=60) as sim:
        sim.gone = frozenset(sim.invoice_ids()[:25])
        config = OracleOccConfig.model_validate(sim.source_config())
        http = HttpClient("ora", config.base_url, backoff_initial=0.01, backoff_max=0.05,
                          pool_size=config.concurrency, secrets=config.secrets())
        source = OracleOccSource("ora", config, http)
        try:
            kept = [r for batch in source.extract(Window(config.start_date, datetime.now(UTC))) for r in batch]
        finally:
            source.close()
    assert len(kept) == 35 and source.stats.extra["vanished"] == 25
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "vanished" in r.getMessage()]
    assert len(warnings) == 4, warnings  # three one by one, then the summary
    summary = warnings[-1]
    assert "25 invoices vanished before their detail call in all (22 more than logged above), e.g. " in summary
    assert summary.endswith(", ...")


def test_fold_repeats_leaves_other_messages_alone(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("invoice_pipeline.test_fold")
    caplog.set_level(logging.INFO, logger="invoice_pipeline")
    with fold_repeats(logger, "gone %s", "{count} gone ({folded} folded): {examples}", show=1, examples=2):
        for i in range(4):
            logger.warning("gone %s", i)
            logger.warning("other %s", i)
    lines = [r.getMessage() for r in caplog.records if r.name == "invoice_pipeline.test_fold"]
    assert lines == ["gone 0", "other 0", "other 1", "other 2", "other 3", "4 gone (3 folded): gone 1, gone 2, ..."]
    logger.warning("gone %s", 9)  # the filter is gone with the block
    assert caplog.records[-1].getMessage() == "gone 9"
