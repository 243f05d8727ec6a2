"""`invoice-pipeline`: run, demo, simulate. Expected errors print one paragraph, never a traceback."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from invoice_pipeline.config import AppConfig, load_config, resolve_config_path
from invoice_pipeline.errors import ConfigError, PipelineError

log = logging.getLogger("invoice_pipeline")


def _backfill_window(args: argparse.Namespace):
    """--from/--to: the launchpad's `backfill: {start, end}` rules (both, ISO-8601, start <= end)."""
    from invoice_pipeline.sources.base import Window
    from invoice_pipeline.timeutil import parse_timestamp

    if args.from_ts is None and args.to_ts is None:
        return None
    if args.from_ts is None or args.to_ts is None:
        raise ConfigError(f"--{'from' if args.from_ts is None else 'to'} is missing: a backfill needs both --from and --to")
    bounds = {}
    for option, value in (("--from", args.from_ts), ("--to", args.to_ts)):
        try:
            bounds[option] = parse_timestamp(value)
        except ValueError:
            raise ConfigError(f"{option} {value!r} is not an ISO-8601 timestamp (e.g. 2024-03-01T00:00:00Z)") from None
    if bounds["--from"] > bounds["--to"]:
        raise ConfigError(f"--from {args.from_ts} is after --to {args.to_ts}")
    return Window(bounds["--from"], bounds["--to"])


def _config_and_sources(args: argparse.Namespace) -> tuple[Path, AppConfig]:
    """The validated config, and every --source named checked against it (before Dagster loads)."""
    path = resolve_config_path(args.config)
    app = load_config(path)
    named = args.source if isinstance(args.source, list) else [args.source] if args.source else []
    unknown = [s for s in named if s not in app.sources]
    if unknown:
        raise ConfigError(f"--source {unknown[0]}: not in {path} (configured: {', '.join(app.sources)})")
    return path, app


def cmd_run(args: argparse.Namespace) -> int:
    path, app = _config_and_sources(args)
    backfill = _backfill_window(args)
    if args.dry_run:
        from invoice_pipeline.dryrun import format_plan, plan_reads

        print(format_plan(plan_reads(app, args.source or list(app.sources), backfill)))
        return 0
    from invoice_pipeline.runner import print_report, run_pipeline  # Dagster loads in seconds: only for a valid config

    report = run_pipeline(app, str(path), args.source,
                          backfill=(args.from_ts, args.to_ts) if backfill is not None else None)
    print_report(report)
    if report.interrupted_at:
        print(f"invoice-pipeline: interrupted (Ctrl-C or SIGTERM) during step {report.interrupted_at}: the run "
              "stopped there. Batches it committed stay; its cursor did not move, so the next run re-reads "
              "the same window.", file=sys.stderr)
        return 130
    return 0 if report.success else 1


def cmd_reconcile(args: argparse.Namespace) -> int:
    path, app = _config_and_sources(args)
    from invoice_pipeline.runner import run_pipeline

    report = run_pipeline(app, str(path), args.source, reconcile="only", allow_mass_deletion=args.allow_mass_deletion)
    for name, meta in report.reconciled.items():
        print(f"{name:16s} listed {meta.get('listed', 0)}, checked {meta.get('checked', 0)}, "
              f"marked deleted {meta.get('deleted', 0)}, reappeared {meta.get('reappeared', 0)}")
    for failure in report.failures:
        print(f"FAILED: {failure}")
    return 0 if report.success else 1


def cmd_replay(args: argparse.Namespace) -> int:
    from invoice_pipeline.replay import replay_source

    _, app = _config_and_sources(args)
    summary = replay_source(app, args.source)
    print(f"{args.source}: rebuilt {summary.invoices_loaded} invoices from raw payloads "
          f"({summary.quarantined} quarantined) in {summary.duration_s:.1f}s, no API call made")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from invoice_pipeline.status import collect_status, format_status

    status = collect_status(load_config(resolve_config_path(args.config)), wait_s=args.wait)
    print(json.dumps(status.to_json(), indent=2) if args.json else format_status(status))
    attention = any((s.last_run is not None and s.last_run.status != "success") or s.blocking_failing
                    for s in status.sources)
    return 1 if attention else 0


def cmd_dbt_sources(args: argparse.Namespace) -> int:
    from invoice_pipeline.dbt_sources import write_sources

    app = load_config(resolve_config_path(args.config))
    written = write_sources(Path(app.warehouse.published_path), Path(args.output), args.name, args.database)
    print(f"dbt sources for {app.warehouse.published_path} written to {written}")
    return 0


def cmd_drop_source(args: argparse.Namespace) -> int:
    from invoice_pipeline.dropping import drop_source

    path = resolve_config_path(args.config)
    app = load_config(path)
    summary = drop_source(app, args.source, apply=args.yes)
    for line in summary.describe():
        print(line)
    if not args.yes:
        print(f"nothing removed: pass --yes to drop source '{args.source}' from {app.warehouse.duckdb_path}")
        return 1
    print(f"source '{args.source}' dropped; the published snapshot and lake lose it at the next publish")
    if args.source in app.sources:
        print(f"note: '{args.source}' is still in {path}: its next run loads it again from start_date")
    return 0


def cmd_dictionary(args: argparse.Namespace) -> int:
    from invoice_pipeline.dictionary import write_dictionary

    print(f"data dictionary written to {write_dictionary(Path(args.output))}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from invoice_pipeline.simulate import serve_forever
    from invoice_pipeline.simulation import Knobs

    serve_forever(args.size, Knobs(latency=args.latency, seed=args.seed), args.port_base)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from invoice_pipeline.demo import run_demo

    return run_demo(size=args.size)


CONFIG_HELP = "config file (default: $INVOICE_PIPELINE_CONFIG or ./invoice_pipeline.yaml)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="invoice-pipeline", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="materialize everything for the chosen sources through the Dagster definitions")
    run.add_argument("--config", help=CONFIG_HELP)
    run.add_argument("--source", action="append", help="a source name from the config (repeatable; default all)")
    run.add_argument("--dry-run", action="store_true",
                     help="print the window each source would read and the API calls it would make; no API call, "
                          "no write, no Dagster run")
    run.add_argument("--from", dest="from_ts", metavar="TS",
                     help="backfill: re-read invoices modified from this ISO-8601 timestamp (with --to); "
                          "a backfill never moves the cursor")
    run.add_argument("--to", dest="to_ts", metavar="TS",
                     help="backfill: ... up to this ISO-8601 timestamp, inclusive (with --from)")
    run.set_defaults(func=cmd_run)
    reconcile = sub.add_parser("reconcile", help="detect invoices deleted at the source now (the deletion "
                               "reconciliation), then refresh the conformed model, check and publish")
    reconcile.add_argument("--config", help=CONFIG_HELP)
    reconcile.add_argument("--source", action="append", help="a source name from the config (repeatable; default all)")
    reconcile.add_argument("--allow-mass-deletion", action="store_true",
                           help="mark invoices deleted even beyond reconcile_max_deleted_share, this once")
    reconcile.set_defaults(func=cmd_reconcile)
    status = sub.add_parser("status", help="per source: cursor, last run and its counts, last publish, failing "
                            "checks, quarantined records (exit 1 if a last run failed or a blocking check fails)")
    status.add_argument("--config", help=CONFIG_HELP)
    status.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    status.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                        help="how long to wait for a running pipeline's writer lock before reading the published "
                             "snapshot instead (default 30)")
    status.set_defaults(func=cmd_status)
    replay = sub.add_parser("replay", help="rebuild a source's tables from its kept raw payloads, without API calls")
    replay.add_argument("--config", help=CONFIG_HELP)
    replay.add_argument("--source", required=True, help="the source to rebuild")
    replay.set_defaults(func=cmd_replay)
    dbt = sub.add_parser("dbt-sources", help="write a dbt sources.yml for the published snapshot (columns, "
                         "descriptions from its comments, not_null/unique tests on the keys)")
    dbt.add_argument("--config", help=CONFIG_HELP)
    dbt.add_argument("--output", default="models/sources.yml", help="file to write (default models/sources.yml)")
    dbt.add_argument("--name", default="invoice_pipeline",
                     help="the dbt source name, as in {{ source('invoice_pipeline', 'invoices') }} (default invoice_pipeline)")
    dbt.add_argument("--database", default="published",
                     help="the alias the dbt profile attaches the snapshot under (dbt-duckdb `attach:`; default published)")
    dbt.set_defaults(func=cmd_dbt_sources)
    drop = sub.add_parser("drop-source", help="remove a source's rows, schema and cursor from the warehouse "
                          "(a run never does: a source left out of a config keeps its data)")
    drop.add_argument("--config", help="config file naming the warehouse (the source need not be in it)")
    drop.add_argument("--source", required=True, help="the source to remove")
    drop.add_argument("--yes", action="store_true", help="really remove (without it: only list what would go)")
    drop.set_defaults(func=cmd_drop_source)
    dictionary = sub.add_parser("dictionary", help="regenerate the data dictionary from the warehouse's comments")
    dictionary.add_argument("--output", default="docs/DATA_DICTIONARY.md",
                            help="file to write (default docs/DATA_DICTIONARY.md)")
    dictionary.set_defaults(func=cmd_dictionary)
    demo = sub.add_parser("demo", help="run the whole pipeline on the built-in simulators, no configuration needed")
    demo.add_argument("--size", type=int, default=300, help="invoices per simulated source")
    demo.set_defaults(func=cmd_demo)
    sim = sub.add_parser("simulate", help="serve the simulators on fixed local ports for dagster dev")
    sim.add_argument("--size", type=int, default=500, help="invoices per simulated source (default 500)")
    sim.add_argument("--latency", type=float, default=0.0, help="seconds added to each request")
    sim.add_argument("--seed", type=int, default=42, help="seed of the generated data set (default 42)")
    sim.add_argument("--port-base", type=int, default=None,
                     help="first port of the four simulators, the others follow (default 8701; 0 = any free ports); "
                          "the ports in use are written to data/simulate.yaml, which Dagster reads")
    sim.set_defaults(func=cmd_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (a service manager, `kill`, Kubernetes) stops the CLI as Ctrl-C does, outside Dagster's
    # steps too (Dagster maps it to SIGINT while a step runs).
    signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGINT))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("dagster", "urllib3", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"invoice-pipeline: configuration error: {exc}", file=sys.stderr)
        return 2
    except PipelineError as exc:
        print(f"invoice-pipeline: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("invoice-pipeline: interrupted (Ctrl-C or SIGTERM)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
