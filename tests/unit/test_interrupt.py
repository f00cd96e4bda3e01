"""Stop requests: what the signal handler records, when a second signal stops at once, what the CLI prints."""

from __future__ import annotations

import os
import signal
import threading

import pytest

import transferkit.training.interrupt as interrupt
from transferkit.cli.app import main
from transferkit.errors import TrainingInterrupted
from transferkit.training.interrupt import ImmediateStop, how_to_resume, stop_requests, stopped_at


def test_first_signal_is_recorded_and_the_handlers_come_back():
    before = {number: signal.getsignal(number) for number in interrupt.HANDLED_SIGNALS}
    with stop_requests() as request:
        assert all(signal.getsignal(number) is not before[number] for number in interrupt.HANDLED_SIGNALS)
        with stop_requests() as nested:  # a compare grid around its cells' trainings: one request
            assert nested is request
        os.kill(os.getpid(), signal.SIGUSR1)
        assert request.signal_number == signal.SIGUSR1 and request.agreed() == signal.SIGUSR1
        os.kill(os.getpid(), signal.SIGTERM)  # a copy within the window (a launcher forwarding it): not a second request
        assert request.signal_number == signal.SIGUSR1
    assert {number: signal.getsignal(number) for number in interrupt.HANDLED_SIGNALS} == before


def test_a_second_signal_stops_at_once_and_a_third_gets_the_default(monkeypatch):
    monkeypatch.setattr(interrupt, "DUPLICATE_WINDOW", 0.0)
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(ImmediateStop) as caught, stop_requests() as request:
        os.kill(os.getpid(), signal.SIGINT)
        assert request.signal_number == signal.SIGINT
        os.kill(os.getpid(), signal.SIGTERM)
    assert (caught.value.signal_number, caught.value.exit_code) == (signal.SIGTERM, 143)
    assert not isinstance(caught.value, Exception)  # no `except Exception` swallows it
    assert signal.getsignal(signal.SIGINT) is previous


def test_outside_the_main_thread_nothing_is_installed():
    seen = []

    def job() -> None:
        with stop_requests() as request:
            seen.append((request.signal_number, signal.getsignal(signal.SIGTERM)))

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=job)
    thread.start()
    thread.join()
    assert seen == [(None, before)]


def test_messages_and_resume_instructions():
    assert str(stopped_at(signal.SIGTERM, 37, 37)) == (
        "interrupted at step 37 (SIGTERM); checkpoint saved; resume with the same command plus --resume")
    assert "its checkpoint at step 30 is kept" in str(stopped_at(signal.SIGINT, 37, 30))
    assert "no checkpoint was written" in str(stopped_at(signal.SIGINT, 37, None))
    assert stopped_at(signal.SIGUSR1, 1, 1).exit_code == 128 + signal.SIGUSR1
    command = ["transferkit", "train-source", "glue/rte", "--name", "a b"]
    assert how_to_resume(command, spell_out=True) == "resume with: transferkit train-source glue/rte --name 'a b' --resume"
    assert how_to_resume([*command, "--resume"], spell_out=True).count("--resume") == 1
    assert how_to_resume(["transferkit", "compare", "--grid=g", "cell=g-rte-pemt-s1"]) == (
        "run the same `transferkit compare` command again to continue")
    assert how_to_resume(["train.py"]) == "run the same job again with resume=True to continue it"


@pytest.mark.parametrize("raised,code,line", [
    (TrainingInterrupted("interrupted at step 3 (SIGTERM); checkpoint saved", signal.SIGTERM), 143,
     "interrupted at step 3 (SIGTERM); checkpoint saved; resume with the same command plus --resume"),
    (ImmediateStop(signal.SIGUSR1), 128 + signal.SIGUSR1, "interrupted: stopped at once on a second SIGUSR1"),
], ids=["interrupted", "second-signal"])
def test_the_cli_prints_one_line_and_exits_with_the_signal_code(raised, code, line, monkeypatch, capsys, tmp_path):
    def train_source(*_args, **_kwargs):
        raise raised

    monkeypatch.setattr("transferkit.workflows.train_source", train_source)
    monkeypatch.setattr("sys.argv", ["transferkit", "--registry", f"sqlite:///{tmp_path}/r.db", "train-source", "glue/rte"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == code
    assert [text for text in capsys.readouterr().err.splitlines() if text.strip()] == [line]
