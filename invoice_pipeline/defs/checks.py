"""Asset checks on the conformed model (the audit rules of audit.py, freshness, quarantine); the blocking
ones keep bad numbers from being published."""


import dagster as dg

from invoice_pipeline.defs.keys import INVOICES_KEY as CHECKED_ASSET
from invoice_pipeline.defs.keys import NO_QUARANTINE_CHECK, SOURCES_FRESH_CHECK
from invoice_pipeline.defs.resources import PipelineResource
from invoice_pipeline.testpoints import pause_point
from invoice_pipeline.audit import (
    RULES,
    AuditRule,
    create_exceptions_view,
    quarantined,
    stale_sources,
    violations_by_rule,
)
from invoice_pipeline.timeutil import utc_now

def _rule_result(rule: AuditRule, total: int, first: list[tuple[str, str, str]]) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=rule.name,
        asset_key=CHECKED_ASSET,
        passed=total == 0,
        severity=dg.AssetCheckSeverity.ERROR if rule.blocking else dg.AssetCheckSeverity.WARN,
        metadata={
            "violations": dg.MetadataValue.int(total),
            "first_offenders": dg.MetadataValue.json([{"source": s, "invoice_id": i, "detail": d} for s, i, d in first]),
            "query": dg.MetadataValue.md(f"`SELECT * FROM main.reconciliation_exceptions WHERE rule = '{rule.name}'`"),
        },
        description=None if total == 0 else f"{total} invoices fail: first {', '.join(f'{s}/{i}' for s, i, _ in first[:5])}",
    )


def _sources_fresh(stale: list[tuple[str, str]]) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=SOURCES_FRESH_CHECK,
        asset_key=CHECKED_ASSET,
        passed=not stale,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"stale_sources": dg.MetadataValue.json(dict(stale))},
        description="; ".join(f"{s}: {why}" for s, why in stale) or None,
    )


def _no_quarantined_records(found: dict[str, list[tuple[str, str]]]) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=NO_QUARANTINE_CHECK,
        asset_key=CHECKED_ASSET,
        passed=not found,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "quarantined_by_source": dg.MetadataValue.json({s: len(r) for s, r in found.items()}),
            "first_records": dg.MetadataValue.json(
                {s: [{"invoice_id": i, "reason": why} for i, why in rows[:10]] for s, rows in found.items()}),
        },
        description="; ".join(f"{s}: {len(r)} quarantined, first {r[0][0]}: {r[0][1]}" for s, r in found.items()) or None,
    )


@dg.multi_asset_check(
    specs=[
        *(dg.AssetCheckSpec(rule.name, asset=CHECKED_ASSET, description=rule.description, blocking=rule.blocking)
          for rule in RULES),
        dg.AssetCheckSpec(SOURCES_FRESH_CHECK, asset=CHECKED_ASSET, blocking=False,
                          description="Each configured source's cursor is no older than its max_staleness (config key)."),
        dg.AssetCheckSpec(NO_QUARANTINE_CHECK, asset=CHECKED_ASSET, blocking=False,
                          description="Records that could not be mapped sit in <source>._quarantine with their reason."),
    ],
    can_subset=True,
)
def audit_checks(context: dg.AssetCheckExecutionContext, pipeline: PipelineResource):
    """Every check of the conformed model in one step: one process (in a UI run every step is one)
    and one connection instead of one per check, and ~10 fewer events to store."""
    selected = {key.name for key in context.selected_asset_check_keys}
    pause_point("checks")
    results: list[dg.AssetCheckResult] = []
    with pipeline.warehouse.writer() as con:
        pipeline.warehouse.ensure_main(con)
        create_exceptions_view(con)
        found = violations_by_rule(con, [rule.name for rule in RULES if rule.name in selected], limit=10)
        results += [_rule_result(rule, *found[rule.name]) for rule in RULES if rule.name in found]
        if SOURCES_FRESH_CHECK in selected:
            results.append(_sources_fresh(stale_sources(con, pipeline.app, utc_now())))
        if NO_QUARANTINE_CHECK in selected:
            results.append(_no_quarantined_records(quarantined(con, list(pipeline.app.sources))))
    yield from results


def build_checks() -> list[dg.AssetChecksDefinition]:
    return [audit_checks]
