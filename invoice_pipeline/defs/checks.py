"""Asset checks on the conformed model; the blocking ones keep bad numbers from being published."""


import dagster as dg

from invoice_pipeline.defs.resources import PipelineResource
from invoice_pipeline.reconcile import RULES, Rule, count_violations, create_exceptions_view, violations

CHECKED_ASSET = dg.AssetKey(["main", "invoices"])


def build_check(rule: Rule) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=CHECKED_ASSET, name=rule.name, description=rule.description, blocking=rule.blocking)
    def _check(pipeline: PipelineResource) -> dg.AssetCheckResult:
        with pipeline.warehouse.writer() as con:
            create_exceptions_view(con)
            total = count_violations(con, rule)
            first = violations(con, rule, limit=10)
        return dg.AssetCheckResult(
            passed=total == 0,
            severity=dg.AssetCheckSeverity.ERROR if rule.blocking else dg.AssetCheckSeverity.WARN,
            metadata={
                "violations": dg.MetadataValue.int(total),
                "first_offenders": dg.MetadataValue.json([{"source": s, "invoice_id": i, "detail": d} for s, i, d in first]),
                "query": dg.MetadataValue.md(f"`SELECT * FROM main.reconciliation_exceptions WHERE rule = '{rule.name}'`"),
            },
            description=None if total == 0 else
            f"{total} invoices fail: first {', '.join(f'{s}/{i}' for s, i, _ in first[:5])}",
        )

    return _check


def build_checks() -> list[dg.AssetChecksDefinition]:
    return [build_check(rule) for rule in RULES]
