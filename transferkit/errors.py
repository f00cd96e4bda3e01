"""User-facing errors.

Every error a user can cause (bad name, missing file, corrupt artifact, foreign
backbone) is a `TransferkitError`; the CLI prints its message as one line and
exits non-zero. Anything else is a bug and keeps its traceback.
"""


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
