"""`python -m invoice_pipeline.iceberg_cli load|publish --config FILE [--source NAME]`: a source run or the
audit + publish of the Iceberg backend from a shell, one process each (as Dagster run workers do)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from invoice_pipeline.config import load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m invoice_pipeline.iceberg_cli")
    parser.add_argument("command", choices=("load", "publish"))
    parser.add_argument("--config", required=True)
    parser.add_argument("--source", action="append", help="load: this source (repeatable; default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = load_config(args.config)
    if app.warehouse.backend != "iceberg":
        print(f"{args.config}: warehouse.backend is {app.warehouse.backend!r}, not 'iceberg'", file=sys.stderr)
        return 2
    if args.command == "load":
        from invoice_pipeline.pipeline import run_source  # takes the Iceberg path for this backend

        for name in args.source or list(app.sources):
            s = run_source(app, name)
            print(json.dumps({"source": name, "status": s.status, "loaded": s.invoices_loaded,
                              "extracted": s.invoices_extracted, "stale": s.invoices_stale,
                              "conflicts": s.extra.get("commit_conflicts", 0), "seconds": s.duration_s}), flush=True)
        return 0
    from invoice_pipeline.iceberg.publish import publish

    result = publish(app)
    print(json.dumps({"published": result.published, "publish_seq": result.publish_seq, "rows": result.rows,
                      "failures": {k: [list(x) for x in v] for k, v in result.failures.items()}}), flush=True)
    return 0 if result.published else 1


if __name__ == "__main__":
    sys.exit(main())
