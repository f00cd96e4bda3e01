"""`transferkit predict`, `evaluate` and the curation commands through the console script's `main()`.

The commands run in this process (the same code as the installed script without a new interpreter importing
torch for every call); the stdin case runs the installed script itself in a new process, reading a real pipe.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_helpers import EXECUTABLE, assert_one_line_error, run_cli_in_process
from interop_helpers import copy_registry

PAIRS = [("A man is sleeping.", "A person sleeps."), ("It rained all day.", "The ground is dry."), ("Cats purr.", "Cats make sounds.")]


@pytest.fixture
def cli(tiny_experts, shared_data, tmp_path):
    """Run a command against a copy of the tiny registry: in this process, or with `console_script=True` as the
    installed script in a new process."""
    url = copy_registry(tiny_experts[0], tmp_path / "registry")

    def run(*args: str, stdin: str | None = None, console_script: bool = False) -> subprocess.CompletedProcess:
        env = {"TRANSFERKIT_REGISTRY": url, "TRANSFERKIT_DATA_DIR": str(shared_data)}
        if not console_script:
            return run_cli_in_process(*args, cwd=tmp_path, env_extra=env, stdin=stdin)
        return subprocess.run([EXECUTABLE, *args], cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
                              input=stdin, capture_output=True, text=True, timeout=600)

    return run


def _labels(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line)["label"] for line in result.stdout.splitlines()]


def test_predict_reads_arguments_stdin_and_every_file_format_alike(cli, tmp_path):
    from_args = [_labels(cli("predict", "tiny-rte", a, b, "--jsonl"))[0] for a, b in PAIRS]
    piped = "".join(f"{a}\t{b}\n" for a, b in PAIRS)
    assert _labels(cli("predict", "tiny-rte", "--jsonl", "-q", stdin=piped, console_script=True)) == from_args
    with (tmp_path / "in.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([("premise", "hypothesis"), *PAIRS])
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"sentence1": a, "sentence2": b}) + "\n" for a, b in PAIRS))
    (tmp_path / "in.tsv").write_text("text\ttext_pair\n" + "".join(f"{a}\t{b}\n" for a, b in PAIRS))  # Hugging Face's names
    pq.write_table(pa.table({"sentence1": [a for a, _ in PAIRS], "sentence2": [b for _, b in PAIRS]}), tmp_path / "in.parquet")
    mapped = ["-c", "sentence1=premise", "-c", "sentence2=hypothesis"]
    assert _labels(cli("predict", "tiny-rte", "--input", "in.csv", *mapped, "--jsonl", "-q")) == from_args
    for name in ("in.jsonl", "in.tsv", "in.parquet"):
        assert _labels(cli("predict", "tiny-rte", "--input", name, "--jsonl", "-q")) == from_args
    table = cli("predict", "tiny-rte", *PAIRS[0])
    assert table.returncode == 0 and from_args[0] in table.stdout and "probability" in table.stdout
    document = json.loads(cli("predict", "tiny-rte", *PAIRS[0], "--json").stdout)
    assert document["expert"]["name"] == "tiny-rte" and document["predictions"][0]["label"] == from_args[0]


def test_predict_writes_a_new_output_file(cli, tmp_path):
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"sentence1": a, "sentence2": b}) + "\n" for a, b in PAIRS))
    result = cli("predict", "tiny-rte", "--input", "in.jsonl", "--output", "out.csv", "-q")
    assert result.returncode == 0 and "wrote 3 predictions" in result.stderr
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [r["sentence1"] for r in rows] == [a for a, _ in PAIRS] and {"label", "score", "p_entailment"} <= set(rows[0])
    assert_one_line_error(cli("predict", "tiny-rte", "--input", "in.jsonl", "--output", "out.csv"), "already exists")
    assert cli("predict", "tiny-stsb", "a b", "c d", "--output", "scores.parquet").returncode == 0
    assert pq.read_table(tmp_path / "scores.parquet").column_names == ["sentence1", "sentence2", "label", "label_id", "score"]


@pytest.mark.parametrize("args,stdin,fragment", [
    (("predict", "tiny-rte", "only one text"), None, "has 1 text(s), but expert tiny-rte (glue/rte) reads 2"),
    (("predict", "tiny-rte", "--jsonl"), "one\ttwo\tthree\n", "stdin line 1 has 3 tab-separated text(s)"),
    (("predict", "tiny-rte", "", "b"), None, "text 1 is empty"),
    (("predict", "tiny-rte", "--input", "in.csv"), None, "no column 'sentence1'"),
    (("predict", "tiny-rte", "--input", "in.csv", "-c", "nope=premise"), None, "has no input 'nope'"),
    (("predict", "tiny-rte", "a", "b", "--model", "minilm"), None, "was trained on backbone"),
    (("predict", "no-such-expert", "a"), None, "no expert has the id, name or alias"),
    (("predict", "tiny-rte", "a", "b", "--output", "x.txt"), None, "--output must end in"),
    (("predict", "tiny-rte", "a", "b", "--precision", "fp16"), None, "--precision must be fp32 or bf16"),
    (("evaluate", "tiny-rte", "--task", "cb"), None, "pass --label-map"),
    (("evaluate", "tiny-rte", "--task", "rte", "--label-map", "garbage"), None, "--label-map must be"),
    (("evaluate", "tiny-rte", "--task", "rte", "--split", "train"), None, "--split must be dev or test"),
])
def test_bad_input_is_one_line_and_a_non_zero_exit(cli, tmp_path, args, stdin, fragment):
    (tmp_path / "in.csv").write_text("premise,hypothesis\na,b\n")
    assert_one_line_error(cli(*args, stdin=stdin), fragment)


def test_evaluate_stores_a_record_shown_by_inspect_and_list(cli):
    result = cli("evaluate", "tiny-rte", "--task", "rte", "--json", "-q")
    evaluation = json.loads(result.stdout)
    assert (evaluation["task_name"], evaluation["split"], evaluation["examples"]) == ("glue/rte", "test", 139)
    assert evaluation["data_fingerprint"]["split_fingerprint"] and evaluation["interval"]["low"] <= evaluation["score"]
    shown = cli("evaluate", "tiny-rte", "--task", "rte", "--split", "dev", "-q").stdout
    assert "on glue/rte dev (138 examples): accuracy" in shown and "95% interval" in shown
    details = json.loads(cli("inspect", "tiny-rte", "--json").stdout)
    assert [e["split"] for e in details["evaluations"]] == ["dev", "test"]
    assert "evaluation" in cli("inspect", "tiny-rte").stdout
    [row] = json.loads(cli("list", "--evaluated-on", "rte", "--json").stdout)
    assert row["expert"]["name"] == "tiny-rte" and row["evaluation"]["split"] == "dev"
    assert {r["name"]: r["evaluations"] for r in json.loads(cli("list", "--json").stdout)}["tiny-rte"] == 2


def test_curation_commands(cli):
    assert "tags: reviewed, stage=prod" in cli("tag", "tiny-rte", "stage=prod", "reviewed").stdout
    assert "tags: reviewed" in cli("untag", "tiny-rte", "stage").stdout
    assert_one_line_error(cli("untag", "tiny-rte", "stage"), "has no tag 'stage'")
    assert "alias rte-best -> tiny-rte" in cli("alias", "set", "rte-best", "tiny-rte").stdout
    assert "(moved from" in cli("alias", "set", "rte-best", "tiny-mrpc").stdout
    assert json.loads(cli("inspect", "rte-best", "--json").stdout)["expert"]["name"] == "tiny-mrpc"
    assert json.loads(cli("alias", "list", "--json").stdout) == [
        {"alias": "rte-best", "expert_id": json.loads(cli("inspect", "tiny-mrpc", "--json").stdout)["expert"]["id"],
         "expert_name": "tiny-mrpc"}]
    assert "@rte-best" in cli("list").stdout
    assert [r["name"] for r in json.loads(cli("list", "--tag", "reviewed", "--json").stdout)] == ["tiny-rte"]
    assert "note: from the tiny suite" in cli("note", "tiny-rte", "from the tiny suite").stdout
    assert "has no note" in cli("note", "tiny-rte", "--clear").stdout
    assert_one_line_error(cli("alias", "set", "tiny-rte", "tiny-mrpc"), "would always win")
    assert_one_line_error(cli("delete", "tiny-mrpc"), "1 expert(s) were made from it (tiny-cb-pemt (source))")
    forced = cli("delete", "tiny-mrpc", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "orphaned tiny-cb-pemt" in forced.stdout and "can no longer be loaded" in forced.stdout
    assert "aliases rte-best" in forced.stdout and "run " in forced.stdout
    assert_one_line_error(cli("predict", "tiny-cb-pemt", "a", "b"), "a source it reads is gone")
    assert cli("delete", "tiny-stsb", "--json").returncode == 0
    assert_one_line_error(cli("inspect", "tiny-stsb"), "no expert has the id, name or alias")


def test_bf16_on_a_cpu_without_bf16_instructions_is_one_warning_line_and_still_predicts(cli, monkeypatch):
    from transferkit import backbone

    monkeypatch.setattr(backbone, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(backbone.torch.cuda, "is_available", lambda: False)
    backbone._load_backbone.cache_clear()  # a backbone this process already holds in bf16 would not be loaded again
    try:
        result = cli("predict", "tiny-rte", *PAIRS[0], "--precision", "bf16", "--jsonl", "-q")
    finally:
        backbone._load_backbone.cache_clear()
    assert _labels(result)  # a warning, not an error: the predictions still come
    assert "Traceback" not in result.stderr and "TransferkitWarning" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("warning: this CPU has no bf16 matrix instructions") and line.endswith("use --precision fp32")
