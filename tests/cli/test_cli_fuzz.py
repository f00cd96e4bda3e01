"""Property-based tests over the command line: any arguments end in a result or in exactly one `error:` line.

Arguments are generated from the real CLI definition (every command and option typer knows, so
new commands are covered automatically) with hostile values: huge and negative integers, nan and
inf, empty strings, path tricks, unknown options, Unicode and the lone surrogates that undecodable
command-line bytes become. Commands run in-process through `transferkit.cli.app.main` against an
empty registry and an empty data folder, so nothing can start a real training; `methods` is left
out because it builds every method on the packaged backbone (seconds per call). Servers (`serve`,
`ui`) never bind or listen here: `transferkit.webserver.bind` and `serve` are replaced for the
in-process runs, so a command line that would start one returns at once. A few cases also run
through the real console script.
"""

from __future__ import annotations

import io
import json
import os
import string
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import pytest
import typer
from cli_helpers import assert_one_line_error, run_cli
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from transferkit.cli.app import app, main
from transferkit.training.loop import TrainingConfig


def _leaf_commands(group, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    """Every runnable command by its path (`("task", "add")` for a sub-command of a group)."""
    leaves: dict[tuple[str, ...], object] = {}
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group (click's, or typer's vendored copy of click)
            leaves.update(_leaf_commands(command, (*prefix, name)))
        else:
            leaves[(*prefix, name)] = command
    return leaves


COMMANDS = _leaf_commands(typer.main.get_command(app))
FUZZED = sorted(set(COMMANDS) - {("methods",)})
GLOBAL_OPTIONS = typer.main.get_command(app).params
EXAMPLES = int(os.environ.get("TRANSFERKIT_FUZZ_EXAMPLES", "150"))
# Every command gets its own share of the examples, so none can be missed by chance.
PER_COMMAND = max(8, EXAMPLES // len(FUZZED))

SPECIAL = [
    "", " ", "0", "-1", "1", "nan", "inf", "-inf", "1e309", "-0.0", "9223372036854775808", "18446744073709551616",
    "glue/rte", "rte", "superglue/cb", "lora", "pemt", "spot", "bf16", "fp8", "r=0", "r=-3", "x=1", "=", "A=B=C",
    "../../etc/passwd", "/dev/null", ".", "sqlite:///fuzz.db", "postgresql://u:p@nowhere/db", "--json", "-", "--",
    "2026-13-45", "tree", "dot", "mermaid", "task", "method", "device", "day",
]
# What argv can hold on Linux: any Unicode but NUL, and lone surrogates standing for undecodable bytes.
ARGV_TEXT = st.text(
    st.one_of(st.characters(codec="utf-8", exclude_characters="\x00"), st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF)),
    max_size=30,
)
VALUES = st.one_of(
    st.sampled_from(SPECIAL), ARGV_TEXT, st.integers(-(2**70), 2**70).map(str), st.floats().map(str),
)
# `report --out` writes files: keep it inside the working folder.
RELATIVE_PATHS = st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=12).map(lambda name: f"out/{name}")


def _value(parameter) -> st.SearchStrategy[str]:
    return RELATIVE_PATHS if parameter.name == "out_dir" else VALUES


@st.composite
def command_lines(draw, path: tuple[str, ...]) -> list[str]:
    argv: list[str] = []
    for option in draw(st.lists(st.sampled_from(GLOBAL_OPTIONS), max_size=2)):
        argv += [draw(st.sampled_from(option.opts)), draw(VALUES)]
    argv += path
    parameters = COMMANDS[path].params
    required = [p for p in parameters if p.required and draw(st.integers(0, 9)) > 0]  # usually past the parser
    extra = draw(st.lists(st.sampled_from(parameters), max_size=4)) if parameters else []
    for parameter in required + extra:
        if parameter.param_type_name == "argument":
            argv.append(draw(VALUES))
        elif parameter.is_flag:
            argv.append(draw(st.sampled_from(parameter.opts)))
        else:
            argv += [draw(st.sampled_from(parameter.opts)), draw(_value(parameter))]
    if draw(st.integers(0, 4)) == 0:  # an unknown option or a stray token somewhere
        argv.insert(draw(st.integers(0, len(argv))), draw(st.sampled_from(["--no-such-option", "-Z", "stray", "--json=maybe"])))
    return argv


def invoke(argv: list[str]) -> tuple[int, str, str]:
    """Run the console-script entry in-process; (exit code, stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    with (mock.patch.object(sys, "argv", ["transferkit", *argv]), mock.patch("transferkit.webserver.bind"),
          mock.patch("transferkit.webserver.serve"), redirect_stdout(stdout), redirect_stderr(stderr)):
        try:
            main()
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture
def fuzz_folder(tmp_path, monkeypatch) -> Path:
    """One empty registry and data folder for all examples (state carried between examples is fine)."""
    (tmp_path / "data").mkdir()
    monkeypatch.setenv("TRANSFERKIT_REGISTRY", f"sqlite:///{tmp_path}/registry.db")
    monkeypatch.setenv("TRANSFERKIT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


# Options that take a value: a `--json` right after one of them is that value, not the flag.
VALUE_OPTIONS = {opt for p in [*GLOBAL_OPTIONS, *(q for c in COMMANDS.values() for q in c.params)]
                 if p.param_type_name == "option" and not p.is_flag for opt in p.opts}


def _asks_for_json(argv: list[str]) -> bool:
    return any(token == "--json" and (i == 0 or argv[i - 1] not in VALUE_OPTIONS) for i, token in enumerate(argv))


@pytest.mark.parametrize("path", FUZZED, ids=" ".join)
def test_any_command_line_ends_in_a_result_or_one_error_line(fuzz_folder, path):
    @settings(max_examples=PER_COMMAND, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(argv=command_lines(path))
    def check(argv: list[str]) -> None:
        _ends_in_a_result_or_one_error_line(argv)

    check()


def _ends_in_a_result_or_one_error_line(argv: list[str]) -> None:
    code, stdout, stderr = invoke(argv)  # an unexpected exception escapes here and fails the test with its traceback
    if "-h" in argv or "--help" in argv:
        return
    if code == 0:
        if _asks_for_json(argv) and stdout.strip():
            json.loads(stdout)  # machine output is valid JSON
        return
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, stderr)
    assert "Traceback" not in stderr


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    st.fixed_dictionaries({}, optional={
        "max_steps": st.integers(-3, 2**70), "epochs": st.floats(), "batch_size": st.integers(-3, 2**70), "lr": st.floats(),
        "head_lr": st.floats(), "prompt_lr": st.floats(), "max_length": st.integers(-3, 10**6), "seed": st.integers(-(2**70), 2**70),
        "eval_every": st.integers(-3, 10**6), "precision": st.sampled_from(["fp32", "bf16", "fp16", ""]), "grad_clip": st.floats(),
        "weight_decay": st.floats(), "warmup_ratio": st.floats(), "patience": st.integers(-3, 10**6),
    })
)
@example(values={"epochs": 5.617791046444737e306})  # finite, but its step count overflowed to infinity
def test_training_settings_are_refused_or_usable(values):
    """What validate() accepts, the loop can use: step counts are integers, the seed fits torch and the registry."""
    import math

    import torch

    from transferkit.errors import InvalidInputError
    from transferkit.training.schedule import plan_schedule

    config = TrainingConfig(**values)
    try:
        config.validate()
    except InvalidInputError as error:
        assert "\n" not in str(error)
        return
    schedule = plan_schedule(
        1000, 100, config.batch_size, train_tokens=30_000, max_steps=config.max_steps, epochs=config.epochs,
        eval_every=config.eval_every, patience=config.patience,
    )
    total = schedule.max_steps
    assert total >= 1 and schedule.eval_every >= 1 and int(total * config.warmup_ratio) >= 0
    assert schedule.patience is None or schedule.patience >= 1
    torch.Generator().manual_seed(config.seed)
    assert -(2**63) <= config.seed < 2**63
    assert all(math.isfinite(x) and x > 0 for x in (config.lr, config.head_lr, config.prompt_lr))


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["train-source", "rte", "--max-steps", "many"], "--max-steps"),
        (["train-source", "rte", "--seed", "18446744073709551616"], "--seed"),
        (["train-source", "rte", "--epochs", "inf"], "--epochs"),
        (["list", "--offset", "99999999999999999999"], "--offset"),
        (["no-such-command"], "no-such-command"),
        (["inspect", b"caf\xe9".decode("utf-8", "surrogateescape")], "UTF-8"),
        (["gc", "--older-than", "nan"], "--older-than"),
        (["methods", "--model", "./no/such/model"], "no/such/model"),
        (["cost", "--registry", "\x1e"], "cannot open the registry"),
        (["predict", "no-such-expert", "some text"], "no expert has the id, name or alias"),
        (["predict", "x", "a", "--output", "out.txt"], "--output must end in"),
        (["evaluate", "x", "--task", "rte", "--label-map", "a=b,a=c"], "--label-map must be"),
        (["serve", "x", "--port", "70000"], "--port must be between 1 and 65535"),
        (["serve", "x", "--max-batch", "0"], "--max-batch"),
        (["ui", "--host", "0.0.0.0"], "needs a token"),
        (["ui", "--host", "::", "--token", "short"], "at least 16"),
        (["ui", "--host", "nowhere.example"], "--host must be an IP address"),
        (["ui", "--port", "0"], "--port must be between 1 and 65535"),
        (["ui"], "there is no registry"),
        (["tag", "x", "bad key!"], "tag key"),
        (["alias", "set", "has space", "x"], "no expert has the id"),
        (["alias", "rm", "nope"], "no alias 'nope'"),
        (["note", "x", "text", "--clear"], "not both"),
        (["delete", "x", "--force"], "no expert has the id"),
    ],
)
def test_hostile_arguments_through_the_console_script(tmp_path, args, fragment):
    (tmp_path / "data").mkdir()
    argv = [arg.encode("utf-8", "surrogateescape") for arg in args]  # real argv bytes, undecodable ones included
    result = run_cli("--registry", f"sqlite:///{tmp_path}/r.db", *argv, cwd=tmp_path, env_extra={"TRANSFERKIT_DATA_DIR": str(tmp_path / "data")})
    assert_one_line_error(result, fragment)
