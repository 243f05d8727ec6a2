"""Several runs launched at once (separate processes, same warehouse) all finish correctly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from invoice_pipeline.warehouse import Warehouse

from .conftest import make_app, warehouse_document


def test_parallel_processes_share_the_warehouse_without_lock_errors(in_tmp: Path) -> None:
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=120) as sim:
        block = sim.source_config()
        app = make_app(in_tmp, {"agv_a": block, "agv_b": block})
        config_file = in_tmp / "cfg.yaml"
        config_file.write_text(yaml.safe_dump({
            "warehouse": warehouse_document(app),
            "sources": {"agv_a": block, "agv_b": block},
        }))
        env = {**os.environ, "DAGSTER_HOME": str(in_tmp / "dagster_home")}
        commands = [["--source", "agv_a"], ["--source", "agv_b"], ["--source", "agv_a"], []]
        procs = [
            subprocess.Popen([sys.executable, "-m", "invoice_pipeline.cli", "run", "--config", str(config_file), *args],
                             cwd=in_tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for args in commands
        ]
        outputs = [p.communicate(timeout=240)[0] for p in procs]
        for proc, out in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, out[-3000:]
            assert "Conflicting lock" not in out
        with Warehouse(app.warehouse).writer() as con:
            per_source = dict(con.execute("SELECT source_name, count(*) FROM main.invoices GROUP BY 1").fetchall())
            assert per_source == {"agv_a": 120, "agv_b": 120}
            dupes = con.execute("SELECT count(*) FROM (SELECT source_name, invoice_id, line_id FROM main.invoice_lines "
                                "GROUP BY ALL HAVING count(*) > 1)").fetchone()[0]
            assert dupes == 0
            assert con.execute("SELECT count(*) FROM agv_a.invoices").fetchone()[0] == 120
        assert Path(app.warehouse.published_path).exists()
