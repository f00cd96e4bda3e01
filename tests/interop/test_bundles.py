"""Bundles on tiny experts: export, import into a fresh registry with identical `inspect --json`, push/pull through a folder."""

from __future__ import annotations

import json

import pytest
from cli_helpers import run_cli
from interop_helpers import bundle_members, cli_output, registry_snapshot

from transferkit.errors import IncompatibleBackboneError, InvalidInputError, NotFoundError, OutputError, RemoteError
from transferkit.interop import export_expert, import_path, pull_bundle, push_expert
from transferkit.registry import open_registry


def fresh(tmp_path, name: str) -> str:
    url = f"sqlite:///{tmp_path}/{name}/registry.db"
    open_registry(url).close()
    return url


def views(url: str, ids: list[str]) -> dict:
    """What a user sees of these experts, as printed: `inspect --json` of each and the first one's `lineage --json`."""
    return {
        **{expert_id: cli_output("--registry", url, "inspect", expert_id, "--json") for expert_id in ids},
        "lineage": cli_output("--registry", url, "lineage", ids[0], "--json"),
    }


def test_bundle_with_sources_restores_ids_lineage_and_cost(tiny_source, tiny_model_dir, tmp_path):
    url, experts = tiny_source
    mixture = experts["mixture"]
    bundle = tmp_path / "cb.transferkit.tar.gz"
    exported = run_cli("--registry", url, "export", mixture.name, "--with-sources", "--out", str(bundle), "--json", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    ids = [mixture.id, experts["lora"].id, experts["mrpc-lora"].id]
    assert [e["id"] for e in json.loads(exported.stdout)["experts"]] == ids  # the expert, then its sources, oldest first
    members = bundle_members(bundle)
    manifest = json.loads(members["transferkit-bundle.json"])
    assert {e["id"] for e in manifest["experts"]} == set(ids) and len(members) == 4
    assert {r["id"] for r in manifest["runs"]} == {experts[k].run_id for k in ("mixture", "lora", "mrpc-lora")}
    assert {t["name"] for t in manifest["tasks"]} == {"superglue/cb", "glue/rte", "glue/mrpc"}
    assert all(t["embedding"] for t in manifest["tasks"]) and all(r["data_fingerprint"] for r in manifest["runs"])

    target = fresh(tmp_path, "target")
    imported = run_cli("--registry", target, "import", str(bundle), "--model", str(tiny_model_dir), "--json", cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert {e["id"] for e in json.loads(imported.stdout)["added"]} == set(ids)
    assert views(target, ids) == views(url, ids)

    before = registry_snapshot(target)  # a second import adds nothing and changes nothing
    again = import_path(open_registry(target), bundle, model=str(tiny_model_dir), command=["t"])
    assert again["added"] == [] and {e["id"] for e in again["already_present"]} == set(ids)
    assert registry_snapshot(target) == before


def test_bundles_are_reproducible_and_need_their_parents(tiny_source, tiny_model_dir, tmp_path):
    url, experts = tiny_source
    registry = open_registry(url)
    export_expert(registry, experts["mixture"], "bundle", tmp_path / "a.tar.gz")
    export_expert(registry, experts["mixture"], "bundle", tmp_path / "b.tar.gz")
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    target = fresh(tmp_path, "target")
    before = registry_snapshot(target)
    with pytest.raises(NotFoundError, match="export it again with --with-sources"):
        import_path(open_registry(target), tmp_path / "a.tar.gz", model=str(tiny_model_dir), command=["t"])
    assert registry_snapshot(target) == before
    # With the sources already in the target, the mixture alone imports and links to them.
    for key in ("lora", "mrpc-lora"):
        export_expert(registry, experts[key], "bundle", tmp_path / f"{key}.tar.gz")
        import_path(open_registry(target), tmp_path / f"{key}.tar.gz", model=str(tiny_model_dir), command=["t"])
    import_path(open_registry(target), tmp_path / "a.tar.gz", model=str(tiny_model_dir), command=["t"])
    parents = open_registry(target).lineage_edges(experts["mixture"].id)["parents"]
    assert parents == registry.lineage_edges(experts["mixture"].id)["parents"]


def test_import_refuses_a_name_held_by_another_expert_and_a_wrong_backbone(tiny_source, tiny_model_dir, tmp_path):
    url, experts = tiny_source
    source = open_registry(url)
    export_expert(source, experts["prompt"], "bundle", tmp_path / "prompt.tar.gz")
    export_expert(source, experts["lora"], "peft", tmp_path / "lora-peft", model=str(tiny_model_dir))
    target = fresh(tmp_path, "target")
    registry = open_registry(target)
    import_path(registry, tmp_path / "lora-peft", name=experts["prompt"].name, model=str(tiny_model_dir), command=["t"])
    before = registry_snapshot(target)
    with pytest.raises(InvalidInputError, match=f"named '{experts['prompt'].name}' already exists here with another id"):
        import_path(registry, tmp_path / "prompt.tar.gz", model=str(tiny_model_dir), command=["t"])
    with pytest.raises(IncompatibleBackboneError, match="was trained on backbone .* pass the matching --model"):
        import_path(registry, tmp_path / "prompt.tar.gz", command=["t"])  # default backbone: the packaged MiniLM
    assert registry_snapshot(target) == before


def test_push_and_pull_through_a_folder(tiny_source, tiny_model_dir, tmp_path):
    url, experts = tiny_source
    shared = tmp_path / "shared-bundles"
    pushed = push_expert(open_registry(url), experts["mixture"], str(shared), with_sources=True)
    assert pushed["path"] == str(shared / "tiny-cb-pemt.transferkit.tar.gz") and len(pushed["experts"]) == 3
    with pytest.raises(OutputError, match="already exists"):
        push_expert(open_registry(url), experts["mixture"], str(shared))
    target = fresh(tmp_path, "target")
    pulled = run_cli("--registry", target, "pull", str(shared), "tiny-cb-pemt", "--model", str(tiny_model_dir), cwd=tmp_path)
    assert pulled.returncode == 0, pulled.stderr
    ids = [experts["mixture"].id, experts["lora"].id, experts["mrpc-lora"].id]
    assert views(target, ids) == views(url, ids)
    with pytest.raises(NotFoundError, match="no bundle named 'nope'"):
        pull_bundle(open_registry(target), str(shared), "nope", model=str(tiny_model_dir))
    with pytest.raises(InvalidInputError, match="bundle name"):
        pull_bundle(open_registry(target), str(shared), "../escape", model=str(tiny_model_dir))


def test_the_hub_remote_reports_offline_mode(tiny_source, tmp_path):
    url, experts = tiny_source
    target = fresh(tmp_path, "target")
    before = registry_snapshot(target)
    with pytest.raises(RemoteError, match="cannot pull from hf://someone/bundles"):
        pull_bundle(open_registry(target), "hf://someone/bundles", "tiny-cb-pemt")
    with pytest.raises(RemoteError, match="cannot push to hf://someone/bundles"):
        push_expert(open_registry(url), experts["lora"], "hf://someone/bundles")
    assert registry_snapshot(target) == before
