"""User-facing errors.

Every error a user can cause (bad name, missing file, corrupt artifact, foreign
backbone) is a `TransferkitError`; the CLI prints its message as one line and
exits non-zero. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class TransferkitError(Exception):
    """An error whose message is a complete, actionable sentence for the user."""

    exit_code: int = 2


class NotFoundError(TransferkitError):
    """A task, expert, method, run or file that was asked for does not exist."""


class InvalidInputError(TransferkitError):
    """An argument or input file is malformed or out of range."""


def require(checks: list[tuple[bool, str]]) -> None:
    """Raise InvalidInputError with the message of the first failed (ok, message) check."""
    for ok, message in checks:
        if not ok:
            raise InvalidInputError(message)


class TransferkitWarning(UserWarning):
    """Something that works but not as the user likely expects; the CLI prints it as one `warning:` line."""


class DataError(TransferkitError):
    """Task data is missing or unreadable."""


class ArtifactCorruptError(TransferkitError):
    """A stored artifact does not match its recorded sha256 or cannot be parsed."""


class IncompatibleBackboneError(TransferkitError):
    """An expert was trained on a different backbone than the one requested."""


class RegistryError(TransferkitError):
    """The registry database cannot be opened, migrated or written."""


class TrainingDivergedError(TransferkitError):
    """Training produced a non-finite loss or gradient and was stopped before corrupting the parameters."""


class OutputError(TransferkitError):
    """An output folder cannot be created or written."""


class RemoteError(TransferkitError):
    """A remote (a shared folder, the Hugging Face Hub) could not be reached or refused a transfer."""


class TrainingInterrupted(TransferkitError):
    """A job stopped on a signal (SIGTERM, SIGINT, SIGUSR1) at an optimizer-step boundary, its state checkpointed.

    The run is recorded as `interrupted` and can be resumed; the exit code is the shell's "ended by signal N"
    convention, 128 + N (143 for SIGTERM, 130 for SIGINT), so schedulers and scripts see why the job ended.
    """

    def __init__(self, what: str, signal_number: int, how_to_resume: str = "resume with the same command plus --resume") -> None:
        self.what, self.signal_number, self.how_to_resume = what, signal_number, how_to_resume
        self.exit_code = 128 + signal_number
        super().__init__(f"{what}; {how_to_resume}")

    def resumed_by(self, how_to_resume: str) -> TrainingInterrupted:
        """The same interruption with other resume instructions (e.g. a `compare` grid's)."""
        return TrainingInterrupted(self.what, self.signal_number, how_to_resume)
