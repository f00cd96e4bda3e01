"""Everything known about one stored expert, as one JSON-ready dict: what `transferkit inspect --json` prints,
`Expert.details()` returns and the web UI's expert page shows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transferkit.registry import ExpertRecord, RegistryStore


def expert_details(registry: RegistryStore, expert: ExpertRecord, verify: bool = True) -> dict[str, Any]:
    """The expert's record, artifact (its sha256 checked first when `verify`), task, run, own and amortized cost,
    lineage edges, curation and stored evaluations."""
    if verify:
        registry.verify_artifact(expert)
    run = registry.get_run(expert.run_id)
    edges = registry.lineage_edges(expert.id)
    task = registry.get_task(expert.task_name)
    return {
        "expert": expert.to_dict(),
        "artifact": {"uri": expert.artifact_uri, "sha256": expert.artifact_sha256, "bytes": expert.artifact_bytes, "verified": verify},
        "task": {"name": expert.task_name, "description": task.description if task else None},
        "run": run.to_dict(),
        "cost": run.cost,
        **cost_details(registry, expert),
        "lineage": {k: [edge.to_dict() for edge in v] for k, v in edges.items()},
        "curation": registry.curation(expert.id).to_dict(),
        "evaluations": [evaluation.to_dict() for evaluation in registry.list_evaluations(expert_id=expert.id)],
    }


def cost_details(registry: RegistryStore, expert: ExpertRecord) -> dict[str, dict]:
    """`own_cost` (money from the price table, with the reason when there is none) and `amortized_cost` (with the rule)."""
    from transferkit.accounting import RULE, expert_costs_for

    cost = expert_costs_for(registry, [expert.id])[expert.id]
    return {
        "own_cost": {**cost.own, "currency": cost.currency, "money_note": cost.money_note},
        "amortized_cost": {**cost.amortized, "partial": cost.partial, "rule": RULE},
    }
