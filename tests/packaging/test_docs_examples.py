"""The worked examples of docs/architecture.md, followed literally: the page's code blocks become the files it
names (in a temporary folder on the package's search path), copies of `transferkit/methods/__init__.py` and
`transferkit/composition/strategies.py` run with the page's registration lines in place of theirs, and the new
method and strategy then train on the tiny model with real data, store, and load back from the registry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "architecture.md"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def page_files(section: str) -> tuple[dict[str, str], list[str]]:
    """In one section of the page: the files given as "`path`:" followed by a python block, and the other python blocks."""
    text = PAGE.read_text()
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    body = text[start:end if end != -1 else None]
    files, snippets = {}, []
    for match in BLOCK.finditer(body):
        if match.group(1) != "python":
            continue
        before = body[:match.start()].rstrip().splitlines()[-1]
        named = re.fullmatch(r"`([\w/]+\.py)`:", before)
        if named:
            files[named.group(1)] = match.group(2)
        else:
            snippets.append(match.group(2))
    return files, snippets


def write_into(files: dict[str, str], root: Path, package_dir: str, monkeypatch) -> None:
    """Write the page's files under `root` and put its folder for `package_dir` on that package's search path."""
    import importlib

    for path, code in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(code)
    package = importlib.import_module(package_dir.replace("/", "."))
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(root / package_dir)])


def applied(source: Path, snippets: list[str]) -> dict:
    """Run a copy of `source` with the page's edits, each a whole statement put in place of the file's own: an import
    line replaces the file's import from the same module, any other statement (a `for` over a tuple of
    registrations, say) replaces the file's statement that starts the same way up to its first bracket."""
    text = source.read_text()
    for snippet in snippets:
        code = snippet.strip("\n")
        if code.startswith("from "):
            module = code.split()[1]
            pattern = rf"^from {re.escape(module)} import .*$"
            assert len(re.findall(pattern, text, re.M)) == 1, f"{source.name} has no one import from {module}"
            text = re.sub(pattern, code.replace("\\", "\\\\"), text, count=1, flags=re.M)
            continue
        head = code[:code.index("(") + 1]
        assert text.count("\n" + head) == 1, f"{source.name} has no one statement starting {head!r}"
        begin = text.index("\n" + head) + 1
        depth, index = 0, begin
        while True:  # to the end of the line where the statement's first bracket closes
            depth += {"(": 1, ")": -1}.get(text[index], 0)
            index += 1
            if depth == 0 and text[index - 1] == ")":
                break
        text = text[:begin] + code + text[text.index("\n", index):]
    namespace: dict = {"__name__": f"docs_example_{source.stem}"}
    exec(compile(text, str(source), "exec"), namespace)  # noqa: S102 - our own documentation's code
    return namespace


@pytest.fixture(autouse=True)
def _forget_example_modules():
    """The example modules exist only in a temporary folder, and they register themselves: drop them from
    sys.modules and their packages, and restore the method registry, afterwards (the strategy registry is
    patched with monkeypatch)."""
    import sys

    import transferkit.composition
    import transferkit.methods
    from transferkit.methods import METHODS

    methods = dict(METHODS)
    yield
    METHODS.clear()
    METHODS.update(methods)
    for name in [n for n in sys.modules if n.startswith(("transferkit.methods.scale", "transferkit.composition.best"))]:
        del sys.modules[name]
    for package, name in ((transferkit.methods, "scale"), (transferkit.composition, "best")):
        if hasattr(package, name):
            delattr(package, name)


def test_the_method_example_is_what_the_page_says(tmp_path, monkeypatch, tiny_model_dir, shared_data):
    from transferkit.methods import METHODS, get_method
    from transferkit.rebuild import load_expert_model
    from transferkit.registry import open_registry
    from transferkit.training.loop import TrainingConfig
    from transferkit.workflows import SourceJob, train_source

    files, snippets = page_files("Adding a method")
    assert sorted(files) == [f"transferkit/methods/scale/{name}.py" for name in ("__init__", "config", "model")]
    write_into(files, tmp_path, "transferkit/methods", monkeypatch)
    before = list(METHODS)
    # The page's one edit: importing the folder (with the built-in ones) is what registers the method.
    registered = applied(REPO / "transferkit" / "methods" / "__init__.py", snippets)["METHODS"]
    assert registered is METHODS and list(METHODS) == [*before, "scale"]
    assert type(get_method("scale")).__name__ == "MethodType"
    assert get_method("scale").module_class.__name__ == "ScaleExpert"
    # No package list to extend: setup.py discovers the packages, pyproject.toml lists none.
    setuptools_table = (REPO / "pyproject.toml").read_text().split("[tool.setuptools]\n", 1)[1].split("\n[", 1)[0]
    assert not re.search(r"^packages\s*=", setuptools_table, re.M)
    assert "find_packages" in (REPO / "setup.py").read_text()

    assert get_method("scale").config_class.recommended_lr == 1e-2
    registry = open_registry(f"sqlite:///{tmp_path}/r.db")
    training = TrainingConfig(max_steps=2, batch_size=8, eval_batch_size=256, seed=1)
    expert = train_source(registry, SourceJob(
        task="rte", method="scale", model=str(tiny_model_dir), data_dir=shared_data, max_train_examples=16,
        show_progress=False, training=training,
    ))
    assert expert.method == "scale" and expert.config == {"target_modules": ["output.dense"]}
    from transferkit.backbone import load_backbone

    model = load_expert_model(registry, expert, load_backbone(str(tiny_model_dir)))
    scales = model.expert.export_tensors()
    assert sorted(scales) == ["encoder.layer.0.output.dense.scale", "encoder.layer.1.output.dense.scale"]
    assert any(not torch.equal(s, torch.ones_like(s)) for s in scales.values())  # it trained
    model.detach()

    # As the target expert of a transfer (the page's `transfer --method scale`).
    from transferkit.composition.transfer import TransferJob, transfer

    source = train_source(registry, SourceJob(
        task="mrpc", method="lora", method_options=["r=2"], model=str(tiny_model_dir), data_dir=shared_data,
        max_train_examples=16, show_progress=False, training=training,
    ))
    mixture = transfer(registry, TransferJob(
        target="cb", sources=[source.id], method="scale", model=str(tiny_model_dir), data_dir=shared_data,
        max_train_examples=16, show_progress=False, training=training,
    )).expert
    load_expert_model(registry, mixture, load_backbone(str(tiny_model_dir))).detach()
    registry.close()


def test_the_strategy_example_is_what_the_page_says(tmp_path, monkeypatch, tiny_model_dir, shared_data):
    from transferkit.backbone import load_backbone
    from transferkit.composition import strategies
    from transferkit.composition.transfer import TransferJob, transfer
    from transferkit.rebuild import load_expert_model
    from transferkit.registry import open_registry
    from transferkit.training.loop import TrainingConfig
    from transferkit.workflows import SourceJob, train_source

    files, snippets = page_files("Adding a strategy")
    assert sorted(files) == ["transferkit/composition/best.py"]
    write_into(files, tmp_path, "transferkit/composition", monkeypatch)
    # The page's two edits, run in a copy of strategies.py: it registers best after the built-in strategies.
    edited = applied(REPO / "transferkit" / "composition" / "strategies.py", snippets)
    assert edited["STRATEGIES"] == (*strategies.STRATEGIES, "best")
    best = edited["get_strategy"]("best")
    assert type(best).__name__ == "BestStrategy" and edited["stored_rebuild"]("best") == best.rebuild
    assert {name: edited["get_strategy"](name) for name in strategies.STRATEGIES} == strategies._STRATEGIES
    # What the edited module registered is what `transfer` and `load_expert_model` now look up.
    monkeypatch.setattr(strategies, "_STRATEGIES", edited["_STRATEGIES"])
    monkeypatch.setattr(strategies, "_REBUILDERS", edited["_REBUILDERS"])

    registry = open_registry(f"sqlite:///{tmp_path}/r.db")
    training = TrainingConfig(max_steps=2, batch_size=8, eval_batch_size=256, seed=1)
    sources = [train_source(registry, SourceJob(
        task=task, method="lora", method_options=["r=2"], model=str(tiny_model_dir), data_dir=shared_data,
        max_train_examples=16, show_progress=False, training=training,
    )) for task in ("rte", "mrpc")]
    for options, target_method in (([], "adapter"), (["target=none"], "none")):
        expert = transfer(registry, TransferJob(
            target="cb", strategy="best", sources=[s.id for s in sources], method_options=options, model=str(tiny_model_dir),
            data_dir=shared_data, max_train_examples=16, show_progress=False, training=training,
        )).expert
        assert expert.method == "best" and expert.config["target_method"] == target_method
        [parent] = registry.lineage_edges(expert.id)["parents"]
        assert parent.role == "source" and parent.parent_id in {s.id for s in sources}
        assert parent.parent_id == expert.config["sources"][0]
        backbone = load_backbone(str(tiny_model_dir))
        model = load_expert_model(registry, expert, backbone)  # rebuilt by the strategy's `rebuild`
        batch = backbone.tokenizer(["It rained.", "A fine film."], return_tensors="pt", padding=True)
        with torch.no_grad():
            logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        assert logits.shape == (2, 3) and torch.isfinite(logits).all()
        model.detach()
    registry.close()
