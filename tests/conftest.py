"""Shared fixtures: offline Hub, a tiny random BERT for fast tests, the real data pack."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # Each pytest-xdist worker (and every subprocess it starts) gets its share of the cores instead of all of them:
    # two workers each running torch on every core would oversubscribe the machine.
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))
    os.environ.setdefault("MKL_NUM_THREADS", str(_share))
    if "torch" in sys.modules:  # a plugin imported torch before these variables could take effect
        sys.modules["torch"].set_num_threads(_share)

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("TRANSFERKIT_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory, monkeypatch):
    """Never touch the developer's real registry or caches."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "token-cache"))
    for name in ("TRANSFERKIT_REGISTRY", "TRANSFERKIT_ARTIFACTS", "TRANSFERKIT_ARTIFACT_ROOT"):
        monkeypatch.delenv(name, raising=False)


def _postgres_unavailable(reason: str, required: bool) -> None:
    """Skip; but fail where PostgreSQL is required (CI sets TRANSFERKIT_REQUIRE_POSTGRES=1)."""
    message = f"PostgreSQL tests need a server: {reason}"
    if required and os.environ.get("TRANSFERKIT_REQUIRE_POSTGRES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _start_postgres(bindir: Path | None, missing: str, required: bool = True):
    from postgres_server import PostgresUnavailable, TemporaryPostgres

    try:
        import psycopg  # noqa: F401 - the driver the registry uses
    except ImportError:
        _postgres_unavailable("the psycopg driver is not installed (pip install 'transferkit[postgres]')", required)
    if bindir is None:
        _postgres_unavailable(missing, required)
    try:
        return TemporaryPostgres(bindir).start()
    except PostgresUnavailable as error:
        _postgres_unavailable(f"the server in {bindir} did not start ({error})", required)


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL (the installed one, e.g. Debian's) on 127.0.0.1 for the whole session."""
    from postgres_server import installed_bindir

    server = _start_postgres(installed_bindir(), "no PostgreSQL server binaries found (apt-get install postgresql)")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pgvector_server(postgres_server):
    """A PostgreSQL server with the pgvector extension: the installed one if it has it, else the pgserver wheel's."""
    from postgres_server import pgserver_bindir

    if "vector" in postgres_server.available_extensions():
        yield postgres_server
        return
    server = _start_postgres(
        pgserver_bindir(), "the installed server has no pgvector and the pgserver wheel is absent", required=False
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "glue").is_dir():
        pytest.skip(f"real data pack not found at {SHARED_DATA} (clone ../shared beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 BERT with random weights and the packaged MiniLM tokenizer, saved to disk."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from transferkit.backbone import default_model_path

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=256,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _fresh_backbone(folder: Path):
    """Load past the process-wide cache, which would share hooks between tests."""
    from transferkit.backbone import _load_backbone, load_backbone

    _load_backbone.cache_clear()
    return load_backbone(str(folder))


def pytest_terminal_summary(terminalreporter) -> None:
    """One line per suite and registry backend, so a CI log shows the registry and web UI suites passing on SQLite
    and on PostgreSQL."""
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "when", "call") != "call" and outcome == "passed":
                continue
            first_param = report.nodeid.partition("[")[2].rstrip("]").split("-")[0]  # the backend fixture's id
            backend = first_param if first_param in ("sqlite", "postgresql") else None
            suite = next((name for folder, name in (("tests/registry/", "registry"), ("tests/ui/", "web UI"))
                          if report.nodeid.startswith(folder)), None)
            if backend and suite:
                counts.setdefault((suite, backend), {}).setdefault(outcome, 0)
                counts[(suite, backend)][outcome] += 1
    for (suite, backend), outcomes in sorted(counts.items()):
        shown = ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items()))
        terminalreporter.write_line(f"{suite} suite on {backend}: {shown}")


@pytest.fixture
def tiny_backbone(tiny_model_dir):
    """A fresh tiny backbone per test."""
    return _fresh_backbone(tiny_model_dir)


@pytest.fixture
def registry(tmp_path):
    """A new, empty SQLite registry in the test's own folder (test modules needing more override it)."""
    from transferkit.registry import open_registry

    store = open_registry(f"sqlite:///{tmp_path}/r.db")
    yield store
    store.close()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 Llama (a causal LM) with random weights and a small byte-level BPE tokenizer.

    Like decoder tokenizers (GPT-2, SmolLM2) the tokenizer adds no special tokens, puts nothing
    between the texts of a pair and has no pad token (the backbone falls back to its EOS).
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["the cat sat on the mat", "a good film", "a rather dull and long film", "Given a premise, the task is to decide"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus * 10, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512,
    )
    LlamaModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_llama(tiny_llama_dir):
    """A fresh tiny causal-LM backbone per test."""
    return _fresh_backbone(tiny_llama_dir)


@pytest.fixture(scope="session")
def tiny_experts(tmp_path_factory, tiny_model_dir, shared_data):
    """(registry URL, experts) for the tests of using experts: LoRA experts for RTE, MRPC and STS-B on the tiny BERT
    (real data, 2 steps) and a pemt mixture of the first two for CB. Tests that change it copy it first
    (`interop_helpers.copy_registry`). Here, not in tests/usage/, so no second conftest module shadows the registry's."""
    from transferkit.composition.transfer import TransferJob, transfer
    from transferkit.registry import open_registry
    from transferkit.training.loop import TrainingConfig
    from transferkit.workflows import SourceJob, train_source

    url = f"sqlite:///{tmp_path_factory.mktemp('usage')}/experts.db"
    registry = open_registry(url)
    experts = {
        key: train_source(registry, SourceJob(
            task=key, method="lora", method_options=["r=2"], model=str(tiny_model_dir), data_dir=shared_data,
            name=f"tiny-{key}", max_train_examples=16, show_progress=False,
            training=TrainingConfig(max_steps=2, batch_size=8, eval_batch_size=256, seed=1),
        ))
        for key in ("rte", "mrpc", "stsb")
    }
    experts["mixture"] = transfer(registry, TransferJob(
        target="cb", strategy="pemt", sources=[experts["rte"].id, experts["mrpc"].id], model=str(tiny_model_dir),
        data_dir=shared_data, name="tiny-cb-pemt", max_train_examples=16, show_progress=False,
        training=TrainingConfig(max_steps=2, batch_size=8, eval_batch_size=256, seed=3),
    )).expert
    registry.close()
    return url, experts


@pytest.fixture(scope="session")
def readme_example(tmp_path_factory, shared_data):
    """The README's Python example run once, as written, in a new process: (registry URL, finished process).

    It trains a real SST-2 LoRA expert on MiniLM (20 steps), evaluates it and aliases it `sentiment`.
    test_readme_python_example.py checks what it prints; test_use_real.py uses the expert it leaves in its registry
    (named sst2-lora) rather than training the same 20-step expert a second time.
    """
    import subprocess
    import sys

    from readme_helpers import readme_python_example

    folder = tmp_path_factory.mktemp("readme-example")
    # The example reads "../shared/data", as the README's commands do from a clone beside shared/.
    (folder / "shared").symlink_to(shared_data.parent, target_is_directory=True)
    (folder / "work").mkdir()
    (folder / "work" / "example.py").write_text(readme_python_example())
    url = f"sqlite:///{folder}/registry.db"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFERKIT_REGISTRY": url}
    result = subprocess.run([sys.executable, "example.py"], cwd=folder / "work", env=env, capture_output=True, text=True,
                            timeout=1200)
    return url, result
