"""The worked examples of docs/architecture.md, followed literally: the page's code blocks become the files it
names (in a temporary folder on the package's search path), its registration edits are applied to copies of
`transferkit/methods/__init__.py` and `transferkit/composition/strategies.py`, and the new method and strategy then
train on the tiny model with real data, store, and load back from the registry."""

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
    """Run a copy of `source` with the page's edits: an import line goes after the file's imports of its kind, a
    `MethodType(...)` entry into the METHODS tuple, a line naming an existing assignment replaces that line."""
    text = source.read_text()
    for snippet in snippets:
        line = snippet.strip("\n")
        if line.lstrip().startswith("from "):
            module = line.split()[1]
            existing = [m for m in re.findall(r"^from (\S+) import .*$", text, re.M) if m == module]
            if existing:  # the page gives the whole line, replacing the one there
                text = re.sub(rf"^from {re.escape(module)} import .*$", line, text, count=1, flags=re.M)
            else:
                last = list(re.finditer(r"^from transferkit\.\S+ import .*$", text, re.M))[-1]
                text = text[:last.end()] + "\n" + line + text[last.end():]
        elif line.lstrip().startswith("MethodType("):
            anchor = "\n    )\n}"
            assert text.count(anchor) == 1, "METHODS is built from a tuple closed by '    )' then '}'"
            text = text.replace(anchor, "\n" + line + anchor)
        else:
            name = line.split(":")[0].split("=")[0].strip()
            assert re.search(rf"^{re.escape(name)}\b.*$", text, re.M), f"{source.name} has no line for {name}"
            text = re.sub(rf"^{re.escape(name)}\b.*$", line.replace("\\", "\\\\"), text, count=1, flags=re.M)
    namespace: dict = {"__name__": f"docs_example_{source.stem}"}
    exec(compile(text, str(source), "exec"), namespace)  # noqa: S102 - our own documentation's code
    return namespace


@pytest.fixture(autouse=True)
def _forget_example_modules():
    """The example modules exist only in a temporary folder: drop them from sys.modules afterwards."""
    import sys

    yield
    for name in [n for n in sys.modules if n.startswith(("transferkit.methods.scale", "transferkit.composition.best"))]:
        del sys.modules[name]


def test_the_method_example_is_what_the_page_says(tmp_path, monkeypatch, tiny_model_dir, shared_data):
    from transferkit.methods import METHODS, get_method
    from transferkit.registry import open_registry
    from transferkit.training.loop import TrainingConfig
    from transferkit.workflows import SourceJob, load_expert_model, train_source

    files, snippets = page_files("Adding a method")
    assert sorted(files) == [f"transferkit/methods/scale/{name}.py" for name in ("__init__", "config", "model")]
    write_into(files, tmp_path, "transferkit/methods", monkeypatch)
    registered = applied(REPO / "transferkit" / "methods" / "__init__.py", snippets)["METHODS"]
    assert set(registered) == {*METHODS, "scale"}
    monkeypatch.setitem(METHODS, "scale", registered["scale"])
    # The page's pyproject step: the package list names each method package the same way.
    assert '"transferkit.methods.lora",' in (REPO / "pyproject.toml").read_text()

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
    from transferkit.composition import strategies, transfer as transfer_module
    from transferkit.composition.transfer import TransferJob, transfer
    from transferkit.registry import open_registry
    from transferkit.training.loop import TrainingConfig
    from transferkit.workflows import SourceJob, load_expert_model, train_source

    files, snippets = page_files("Adding a strategy")
    assert sorted(files) == ["transferkit/composition/best.py"]
    write_into(files, tmp_path, "transferkit/composition", monkeypatch)
    plugged = applied(REPO / "transferkit" / "composition" / "strategies.py", snippets)["PLUGGED"]
    assert set(plugged) == {*strategies.PLUGGED, "best"}
    best = plugged["best"]
    monkeypatch.setitem(strategies.PLUGGED, "best", best)
    monkeypatch.setitem(strategies.STORED, best.stored_method, best)
    # transfer.py builds its tuple of names from PLUGGED when it is imported; an edited strategies.py is imported
    # before it, so the page's one line is enough there. Here the module is already imported: extend the tuple.
    monkeypatch.setattr(transfer_module, "STRATEGIES", (*transfer_module.STRATEGIES, "best"))

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
