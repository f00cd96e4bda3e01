"""Notes, tags, aliases and stored evaluations travel in bundles and are restored on SQLite and PostgreSQL; old bundles
without them import."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from interop_helpers import bundle_members, copy_registry, file_entry, write_tar

from transferkit.errors import InvalidInputError
from transferkit.interop import export_expert, import_path
from transferkit.registry import open_registry


@pytest.fixture(params=["sqlite", "postgresql"])
def target_url(request, tmp_path) -> str:
    """An empty registry database to import into, on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/target.db"
    return request.getfixturevalue("postgres_server").create_database()


@pytest.fixture
def curated_bundle(tiny_source, tmp_path, tiny_model_dir) -> tuple[Path, dict]:
    """A bundle of the pemt mixture and its sources, with a note, tags and aliases on them."""
    url, experts = tiny_source
    source = open_registry(copy_registry(url, tmp_path / "source"))
    mixture, lora = experts["mixture"], experts["lora"]
    source.set_note(mixture.id, "CB from RTE and MRPC")
    source.set_tags(mixture.id, {"stage": "prod", "reviewed": ""})
    source.set_tags(lora.id, {"origin": "tiny suite"})
    source.set_alias("cb-best", mixture.id)
    source.set_alias("rte-src", lora.id)
    source.add_evaluation(
        expert_id=mixture.id, task_name="file:cb-extra.csv", split="file", metric="accuracy", metrics={"accuracy": 0.75},
        interval={"mean": 0.75, "low": 0.5, "high": 1.0}, examples=4, data_fingerprint={"sha256": "ab" * 32},
        details={"seed": 0, "command": ["transferkit", "evaluate"]},
    )
    path = tmp_path / "cb.transferkit.tar.gz"
    export_expert(source, mixture, "bundle", path, with_sources=True, model=str(tiny_model_dir))
    source.close()
    return path, experts


def test_curation_survives_export_and_import(curated_bundle, target_url, tiny_model_dir, tmp_path):
    path, experts = curated_bundle
    target = open_registry(target_url, tmp_path / "target-blobs")
    summary = import_path(target, path, model=str(tiny_model_dir), command=["test"])
    assert summary["aliases_not_moved"] == []
    mixture, lora = experts["mixture"], experts["lora"]
    assert target.get_expert("cb-best").id == mixture.id and target.get_expert("rte-src").id == lora.id
    curation = target.curation(mixture.id)
    assert (curation.note, curation.tags, curation.aliases) == ("CB from RTE and MRPC", {"reviewed": "", "stage": "prod"}, ["cb-best"])
    assert target.curation(lora.id).tags == {"origin": "tiny suite"}
    (evaluation,) = target.list_evaluations(expert_id=mixture.id)
    assert (evaluation.task_name, evaluation.score, evaluation.interval["low"], evaluation.examples) == ("file:cb-extra.csv", 0.75, 0.5, 4)
    assert [e.id for e, _ in target.best_on("file:cb-extra.csv")] == [mixture.id]  # ranked here as it was there
    with pytest.raises(InvalidInputError, match="made from it"):  # guarded delete holds on the restored lineage
        target.delete_expert(lora.id)
    target.close()


def test_an_alias_held_here_by_another_expert_is_left_and_reported(curated_bundle, target_url, tiny_model_dir, tmp_path):
    path, experts = curated_bundle
    target = open_registry(target_url, tmp_path / "target-blobs")
    import_path(target, path, model=str(tiny_model_dir), command=["test"])
    target.set_alias("cb-best", experts["lora"].id)  # someone here moved it
    target.set_note(experts["mixture"].id, "our own note")
    summary = import_path(target, path, model=str(tiny_model_dir), command=["test"])
    assert summary["aliases_not_moved"] == ["cb-best"] and summary["added"] == []
    assert len(target.list_evaluations(expert_id=experts["mixture"].id)) == 1  # importing again adds nothing twice
    assert target.get_expert("cb-best").id == experts["lora"].id
    assert target.curation(experts["mixture"].id).note == "our own note"  # a note is filled in, never overwritten
    target.close()


def test_a_bundle_written_before_curation_travelled_still_imports(curated_bundle, tiny_model_dir, tmp_path):
    path, experts = curated_bundle
    members = bundle_members(path)
    manifest = json.loads(members.pop("transferkit-bundle.json"))
    del manifest["curation"], manifest["evaluations"]
    old = tmp_path / "old.transferkit.tar.gz"
    write_tar(old, [file_entry("transferkit-bundle.json", json.dumps(manifest).encode()),
                    *(file_entry(name, data) for name, data in members.items())])
    target = open_registry(f"sqlite:///{tmp_path}/old-target.db")
    assert {e["id"] for e in import_path(target, old, model=str(tiny_model_dir), command=["test"])["added"]} >= {experts["mixture"].id}
    assert target.curation(experts["mixture"].id).tags == {} and target.list_aliases() == {}
    assert target.list_evaluations() == []
    target.close()


def test_an_evaluation_of_an_expert_outside_the_bundle_is_refused(curated_bundle, tiny_model_dir, tmp_path):
    path, _ = curated_bundle
    members = bundle_members(path)
    manifest = json.loads(members.pop("transferkit-bundle.json"))
    manifest["evaluations"][0]["expert_id"] = "elsewhere00"
    bad = tmp_path / "bad.transferkit.tar.gz"
    write_tar(bad, [file_entry("transferkit-bundle.json", json.dumps(manifest).encode()),
                    *(file_entry(name, data) for name, data in members.items())])
    target = open_registry(f"sqlite:///{tmp_path}/bad-target.db")
    with pytest.raises(InvalidInputError, match="evaluation .* not in the bundle"):
        import_path(target, bad, model=str(tiny_model_dir), command=["test"])
    assert target.list_experts() == [] and target.list_evaluations() == []
    target.close()


def test_malformed_curation_is_refused_before_anything_is_written(curated_bundle, tiny_model_dir, tmp_path):
    path, _ = curated_bundle
    members = bundle_members(path)
    manifest = json.loads(members.pop("transferkit-bundle.json"))
    manifest["curation"][0]["tags"] = {"bad key!": "x"}
    bad = tmp_path / "bad.transferkit.tar.gz"
    write_tar(bad, [file_entry("transferkit-bundle.json", json.dumps(manifest).encode()),
                    *(file_entry(name, data) for name, data in members.items())])
    target = open_registry(f"sqlite:///{tmp_path}/bad-target.db")
    with pytest.raises(InvalidInputError, match="tag key"):
        import_path(target, bad, model=str(tiny_model_dir), command=["test"])
    assert target.list_experts() == []
    target.close()
