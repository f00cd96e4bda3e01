"""`transferkit reproduce`: re-run the job that made an expert, from what its run recorded, and compare.

The job is rebuilt from the run's `hyperparams["job"]` (the user-facing options,
with the task and source experts resolved to what was actually used), never by
re-parsing the recorded command line. The new expert is stored as
`<original>-repro` with a lineage edge `reproduces` from the original. Refused
up front: runs recorded before the job was stored, a backbone whose weights
differ from the recorded fingerprint, source experts that no longer exist. The
data is read from the current data dir; whether its fingerprint matches the
recorded one is part of the result, as are code and package version changes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path

from transferkit.backbone import load_backbone
from transferkit.composition.transfer import TransferJob, transfer
from transferkit.errors import IncompatibleBackboneError, InvalidInputError, NotFoundError
from transferkit.registry import ExpertRecord, RegistryStore, RunRecord
from transferkit.training.loop import TrainingConfig
from transferkit.experts import expert_name
from transferkit.workflows import SourceJob, train_source

REPRODUCES_ROLE = "reproduces"
_COMMON_FIELDS = ("method_options", "model", "lr", "training", "max_train_examples", "task_prompt_length")
JOB_FIELDS = {
    "train-source": ("task", "method", *_COMMON_FIELDS),
    "transfer": ("target", "strategy", "sources", "top_k", "route_top_k", "sparsity_weight", "method", *_COMMON_FIELDS),
}
# Fields added to the job record later, with the value that reproduces runs recorded before them.
JOB_FIELD_DEFAULTS = {"transfer": {
    "gate_input": "states", "zero_expert": False, "head_init": "none", "gate_init": "uniform", "source_prompt_scale": "fixed",
}}


@dataclass
class Reproduction:
    """The original expert, its reproduction, and how they compare."""

    original: ExpertRecord
    expert: ExpertRecord
    recorded_data: dict
    data: dict
    same_weights: bool  # every stored tensor bit-identical to the original's
    metrics: list[dict] = field(default_factory=list)  # split, metric, original, reproduced, difference
    environment: list[dict] = field(default_factory=list)  # what, recorded, now: code and package versions that changed

    @property
    def data_matches(self) -> bool:
        return self.recorded_data.get("fingerprint") == self.data.get("fingerprint")

    @property
    def data_differences(self) -> list[str]:
        """Splits whose examples differ from the recorded ones."""
        recorded, now = self.recorded_data.get("split_fingerprints") or {}, self.data.get("split_fingerprints") or {}
        return [split for split in sorted(set(recorded) | set(now)) if recorded.get(split) != now.get(split)]

    @property
    def max_difference(self) -> float:
        return max((abs(row["difference"]) for row in self.metrics), default=0.0)

    def to_dict(self) -> dict:
        return {
            "original": {"id": self.original.id, "name": self.original.name, "run_id": self.original.run_id},
            "reproduction": {"id": self.expert.id, "name": self.expert.name, "run_id": self.expert.run_id},
            "data": {
                "matches": self.data_matches,
                "recorded": self.recorded_data.get("fingerprint"),
                "now": self.data.get("fingerprint"),
                "differing_splits": self.data_differences,
            },
            "metrics": [dict(row) for row in self.metrics],
            "max_abs_difference": self.max_difference,
            "same_weights": self.same_weights,
            "environment_changes": [dict(row) for row in self.environment],
        }


def recorded_job(run: RunRecord, expert: ExpertRecord) -> dict:
    """The job stored on the run, after checking it has every field `reproduce` needs."""
    wanted = JOB_FIELDS.get(run.kind)
    if wanted is None:
        raise InvalidInputError(
            f"expert {expert.name} was made by a {run.kind!r} run; only train-source and transfer runs can be reproduced"
        )
    job = run.hyperparams.get("job")
    missing = list(wanted) if not isinstance(job, dict) else [key for key in wanted if key not in job]
    if missing:
        when = "before transferkit recorded jobs" if not isinstance(job, dict) else "with an incomplete job record"
        raise InvalidInputError(
            f"expert {expert.name}'s run {run.id} was recorded {when}, so it cannot be rebuilt "
            f"(missing job fields: {', '.join(missing)}); train it again with this version to make it reproducible"
        )
    return job


def rebuild_job(
    run: RunRecord, expert: ExpertRecord, *, data_dir: Path | None, name: str, command: list[str], show_progress: bool
) -> SourceJob | TransferJob:
    """The same job as the recorded one (same seed and settings), named `name` and linked to `expert`."""
    job = recorded_job(run, expert)
    common = dict(
        method_options=list(job["method_options"]),
        model=job["model"],
        lr=job["lr"],
        training=TrainingConfig(**job["training"]),
        max_train_examples=job["max_train_examples"],
        task_prompt_length=job["task_prompt_length"],
        data_dir=data_dir,
        name=name,
        show_progress=show_progress,
        command=command,
        extra_lineage=[(expert.id, REPRODUCES_ROLE, None)],
    )
    if run.kind == "train-source":
        return SourceJob(task=job["task"], method=job["method"], **common)
    return TransferJob(
        target=job["target"],
        strategy=job["strategy"],
        sources=list(job["sources"]) or None,  # scratch records [] and must get None back
        top_k=job["top_k"],
        route_top_k=job["route_top_k"],
        sparsity_weight=job["sparsity_weight"],
        method=job["method"],
        **{key: job.get(key, default) for key, default in JOB_FIELD_DEFAULTS["transfer"].items()},
        **common,
    )


def reproduce(
    registry: RegistryStore,
    reference: str,
    *,
    data_dir: Path | None,
    name: str | None = None,
    command: list[str] | None = None,
    show_progress: bool = True,
    resume: bool = False,
) -> Reproduction:
    """Re-run the recorded job of expert `reference` (id, prefix or name) into the registry and compare the results.

    `resume`: continue an interrupted or failed reproduction with the same name from its checkpoint.
    """
    original = registry.get_expert(reference)
    run = registry.get_run(original.run_id)
    job = rebuild_job(
        run, original, data_dir=data_dir, name=expert_name(registry, name, f"{original.name}-repro"),
        command=command if command is not None else ["transferkit", *sys.argv[1:]], show_progress=show_progress,
    )
    if isinstance(job, TransferJob):
        for source_id in job.sources or []:
            _check_source(registry, original, source_id)
    _check_backbone(original, job.model)
    job.resume = resume
    expert = transfer(registry, job).expert if isinstance(job, TransferJob) else train_source(registry, job)
    new_run = registry.get_run(expert.run_id)
    return Reproduction(
        same_weights=_same_tensors(registry, original, expert),
        original=original,
        expert=expert,
        recorded_data=run.data_fingerprint,
        data=new_run.data_fingerprint,
        metrics=metric_differences(original.metrics, expert.metrics),
        environment=_environment_changes(run, new_run),
    )


def metric_differences(original: dict, reproduced: dict) -> list[dict]:
    """Per split (dev, test) and metric: both values and reproduced - original."""
    rows = []
    for split in ("dev", "test"):
        for metric, before in (original.get(split) or {}).items():
            after = (reproduced.get(split) or {}).get(metric)
            if isinstance(before, Real) and isinstance(after, Real):
                rows.append({"split": split, "metric": metric, "original": float(before), "reproduced": float(after),
                             "difference": float(after) - float(before)})
    return rows


def _same_tensors(registry: RegistryStore, original: ExpertRecord, expert: ExpertRecord) -> bool:
    # Compare tensors, not artifact digests: safetensors writes the metadata keys in no fixed order,
    # so two bit-identical experts can still have different file bytes.
    import torch

    before, after = registry.load_expert_tensors(original)[0], registry.load_expert_tensors(expert)[0]
    return before.keys() == after.keys() and all(torch.equal(before[key], after[key]) for key in before)


def _check_backbone(original: ExpertRecord, model: str | None) -> None:
    backbone = load_backbone(model)
    if backbone.backbone_id != original.backbone_id:
        raise IncompatibleBackboneError(
            f"expert {original.name} was trained on backbone {original.backbone_id} "
            f"({original.backbone.get('name')}), but the recorded model {model or 'default (packaged MiniLM)'} now loads "
            f"as {backbone.backbone_id}; reproducing needs the same weights, so restore that model first"
        )


def _check_source(registry: RegistryStore, original: ExpertRecord, source_id: str) -> None:
    try:
        found = registry.get_expert(source_id)
    except NotFoundError:
        found = None
    if found is None or found.id != source_id:  # a name or id prefix that happens to match is not the source
        raise NotFoundError(
            f"source expert {source_id} of {original.name} no longer exists in the registry, so the transfer "
            "cannot be reproduced"
        )


def _environment_changes(recorded: RunRecord, now: RunRecord) -> list[dict]:
    changes = []
    for what, before, after in (("code", recorded.code_version, now.code_version),
                                ("package", recorded.package_versions, now.package_versions)):
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                changes.append({"what": f"{what} {key}", "recorded": before.get(key), "now": after.get(key)})
    return changes
