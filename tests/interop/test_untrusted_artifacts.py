"""Hostile imports: a pickle bomb, archive traversal and links, a mismatched shape, a truncated file, an unknown method,
oversize input. Each is refused with a one-line user error (through the console script for the pickle bomb), nothing
runs, and the registry is byte-for-byte unchanged."""

from __future__ import annotations

import builtins
import json
import pickle
import re
import shutil
import struct
import tarfile

import pytest
import torch
from cli_helpers import assert_one_line_error, run_cli
from interop_helpers import bundle_members, file_entry, registry_snapshot, rewrite_bundle, write_tar

from transferkit.errors import InvalidInputError, TransferkitError
from transferkit.interop import export_expert, import_path
from transferkit.interop.untrusted import ImportLimits, check_member_name, load_safetensors
from transferkit.registry import open_registry


class Bomb:
    """Unpickling this creates `marker`: what a malicious checkpoint would do (with worse code)."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


@pytest.fixture(scope="module")
def attack(tiny_source, tiny_model_dir, tmp_path_factory):
    """A target registry that already holds an expert, and genuine exports to tamper with."""
    url, experts = tiny_source
    folder = tmp_path_factory.mktemp("attack")
    source = open_registry(url)
    export_expert(source, experts["lora"], "bundle", folder / "lora.tar.gz")
    export_expert(source, experts["prompt"], "bundle", folder / "prompt.tar.gz")
    export_expert(source, experts["lora"], "peft", folder / "lora-peft", model=str(tiny_model_dir))
    target = f"sqlite:///{folder}/target/registry.db"
    import_path(open_registry(target), folder / "prompt.tar.gz", model=str(tiny_model_dir), command=["t"])
    return target, folder


def refused(target, path, tiny_model_dir, *fragments) -> None:
    """Importing `path` fails with a user error (the CLI prints it as one line) naming the problem; the registry is as before."""
    before = registry_snapshot(target)
    task = "rte" if path.is_dir() else None  # PEFT adapters need a task; bundles carry theirs
    with pytest.raises(TransferkitError) as caught:
        import_path(open_registry(target), path, task=task, model=str(tiny_model_dir), command=["t"])
    message = str(caught.value)
    assert "\n" not in message and all(fragment in message for fragment in fragments), message
    assert registry_snapshot(target) == before


def test_a_pickle_bomb_is_never_opened(attack, tiny_model_dir, tmp_path):
    target, folder = attack
    proof = tmp_path / "bomb-works"
    pickle.loads(pickle.dumps(Bomb(proof)))  # the payload is live: unpickling it runs code
    assert proof.exists()

    marker = tmp_path / "pwned"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    shutil.copyfile(folder / "lora-peft" / "adapter_config.json", adapter / "adapter_config.json")
    torch.save({"base_model.model.encoder.layer.0.attention.self.query.lora_A.weight": Bomb(marker)}, adapter / "adapter_model.bin")
    before = registry_snapshot(target)
    result = run_cli("--registry", target, "import", str(adapter), "--task", "rte", "--model", str(tiny_model_dir), cwd=tmp_path)
    assert_one_line_error(result, "adapter_model.bin", "pickle")
    assert registry_snapshot(target) == before
    # The same bytes under the safetensors name are not safetensors.
    (adapter / "adapter_model.bin").rename(adapter / "adapter_model.safetensors")
    with pytest.raises(InvalidInputError, match="adapter_model.safetensors: the safetensors header claims"):
        import_path(open_registry(target), adapter, task="rte", model=str(tiny_model_dir), command=["t"])
    # In a bundle, a pickle is an entry that does not belong.
    members = bundle_members(folder / "lora.tar.gz")
    write_tar(tmp_path / "bundle.tar.gz", [*map(lambda item: file_entry(*item), members.items()),
                                           file_entry("artifacts/extra.pt", pickle.dumps(Bomb(marker)))])
    with pytest.raises(InvalidInputError, match="unexpected entry 'artifacts/extra.pt'"):
        import_path(open_registry(target), tmp_path / "bundle.tar.gz", model=str(tiny_model_dir), command=["t"])
    assert not marker.exists()


def _link(name: str, kind: bytes, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize("entry, fragment", [
    (file_entry("../../escaped.txt", b"x"), "not a plain relative path"),
    (file_entry("/tmp/escaped-absolute.txt", b"x"), "not a plain relative path"),
    (_link("artifacts/link.safetensors", tarfile.SYMTYPE, "/etc/passwd"), "is a symlink"),
    (_link("artifacts/hard.safetensors", tarfile.LNKTYPE, "transferkit-bundle.json"), "is a hardlink"),
])
def test_archive_traversal_and_links_are_refused(entry, fragment, attack, tiny_model_dir, tmp_path):
    target, folder = attack
    members = bundle_members(folder / "lora.tar.gz")
    write_tar(tmp_path / "evil.tar.gz", [entry, *map(lambda item: file_entry(*item), members.items())])
    refused(target, tmp_path / "evil.tar.gz", tiny_model_dir, repr(entry[0].name), fragment)
    assert not (tmp_path.parent / "escaped.txt").exists() and not (tmp_path.parent.parent / "escaped.txt").exists()


def test_a_mismatched_shape_is_refused(attack, tiny_model_dir, tmp_path):
    target, folder = attack
    name = "expert.encoder.layer.0.attention.self.query.lora_A.weight"

    def widen(tensors, metadata):
        tensors[name] = torch.zeros(3, tensors[name].shape[1])  # rank 3 where the config says r=2

    rewrite_bundle(folder / "lora.tar.gz", tmp_path / "shape.tar.gz", change_tensors=widen)
    refused(target, tmp_path / "shape.tar.gz", tiny_model_dir, "has shape (3, 32), expected (2, 32)")
    # The same in a PEFT adapter folder.
    from safetensors.torch import load_file, save_file

    shutil.copytree(folder / "lora-peft", tmp_path / "peft")
    weights = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    weights["base_model.model." + name[len("expert."):]] = torch.zeros(2, 31)
    save_file(weights, tmp_path / "peft" / "adapter_model.safetensors")
    with pytest.raises(InvalidInputError, match=r"has shape \(2, 31\), expected \(2, 32\)"):
        import_path(open_registry(target), tmp_path / "peft", model=str(tiny_model_dir), command=["t"])


def test_a_truncated_safetensors_file_is_refused(attack, tiny_model_dir, tmp_path):
    target, folder = attack
    rewrite_bundle(folder / "lora.tar.gz", tmp_path / "cut.tar.gz", change_bytes=lambda blob: blob[: len(blob) - 100])
    refused(target, tmp_path / "cut.tar.gz", tiny_model_dir, "truncated")
    shutil.copytree(folder / "lora-peft", tmp_path / "peft")
    weights = tmp_path / "peft" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(InvalidInputError, match="truncated"):
        import_path(open_registry(target), tmp_path / "peft", model=str(tiny_model_dir), command=["t"])


def test_a_config_with_an_unknown_method_is_refused(attack, tiny_model_dir, tmp_path):
    target, folder = attack

    def evil(tensors, metadata):
        metadata["method"] = "evil"

    rewrite_bundle(folder / "lora.tar.gz", tmp_path / "method.tar.gz", change_tensors=evil,
                   change_record=lambda record: record.update(method="evil"))
    refused(target, tmp_path / "method.tar.gz", tiny_model_dir, "unknown method 'evil'")
    # Unknown or mistyped config fields of a known method.
    for change, fragment in (({"r": 2, "alpha": 16.0, "dropout": 0.0, "target_modules": None, "exec": "x"}, "unknown option(s) exec"),
                             ({"r": "2", "alpha": 16.0, "dropout": 0.0, "target_modules": None}, "option r='2' is not a valid int")):
        def set_config(tensors, metadata, change=change):
            metadata["config"] = json.dumps(change, sort_keys=True)

        rewrite_bundle(folder / "lora.tar.gz", tmp_path / "config.tar.gz", change_tensors=set_config,
                       change_record=lambda record, change=change: record.update(config=change))
        with pytest.raises(InvalidInputError, match=re.escape(fragment)):
            import_path(open_registry(target), tmp_path / "config.tar.gz", model=str(tiny_model_dir), command=["t"])
        (tmp_path / "config.tar.gz").unlink()


def test_size_limits_are_enforced(attack, tiny_model_dir):
    target, folder = attack
    before = registry_snapshot(target)
    cases = [  # (limits, refusal, whether it concerns a folder too: a folder import reads three named files)
        (ImportLimits(max_file_bytes=1000), "over the 1,000-byte limit per file", True),
        (ImportLimits(max_total_bytes=5000), "over the 5,000-byte total limit", True),
        (ImportLimits(max_json_bytes=100), "over the 100-byte limit for JSON", True),
        (ImportLimits(max_files=1), "more than 1 entries", False),
    ]
    for limits, fragment, folder_too in cases:
        paths = [folder / "lora.tar.gz", folder / "lora-peft"] if folder_too else [folder / "lora.tar.gz"]
        for path in paths:
            with pytest.raises(InvalidInputError, match=fragment):
                import_path(open_registry(target), path, model=str(tiny_model_dir), command=["t"], limits=limits)
    assert registry_snapshot(target) == before


def _safetensors(header: dict, data: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return len(encoded).to_bytes(8, "little") + encoded + data


@pytest.mark.parametrize("blob, fragment", [
    (_safetensors({"w": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}, bytes(8)), "dtype 'I64'"),
    (_safetensors({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                   "v": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)), "overlaps"),
    (_safetensors({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, bytes(8)), "does not fill"),
    (_safetensors({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(8)), "truncated"),
    (_safetensors({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, struct.pack("<f", float("nan"))), "NaN"),
    (_safetensors({"__metadata__": {"a": 1}}, b""), "strings to strings"),
])
def test_safetensors_headers_are_checked_by_hand(blob, fragment):
    with pytest.raises(InvalidInputError, match=fragment):
        load_safetensors(blob, "test file")


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "C:\\x", "a\\b", "", "a/\x00b", "a/ b"])
def test_archive_member_names_must_be_plain_relative_paths(name):
    with pytest.raises(InvalidInputError, match="not a plain relative path"):
        check_member_name(name, "archive")
    assert check_member_name("artifacts/ab12.safetensors", "archive") == "artifacts/ab12.safetensors"
