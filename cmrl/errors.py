"""The errors a user can cause (bad config, missing checkpoint, unknown task, ...) and the one
line each becomes: the CLI and the app both map exceptions here, so a message reads the same from
either door. Anything not listed is a bug and keeps its traceback."""

from __future__ import annotations

MAX_MESSAGE = 500


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception classes that mean "the input was wrong", not "the code is wrong"."""
    from .runs.checkpoint import CheckpointError
    from .config import ConfigError
    from .data import DatasetError
    from .envs.tasks import HeldOutTaskError, UnknownTaskError
    from .nets.text_encoders import GoalTextError, TextEncoderError

    return (ConfigError, CheckpointError, DatasetError, HeldOutTaskError, UnknownTaskError,
            GoalTextError, TextEncoderError, FileExistsError, FileNotFoundError)


def user_message(error: BaseException) -> str:
    """One line for the user: the error's lines joined by "; ", without a KeyError's quotes, at
    most MAX_MESSAGE characters."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    line = "; ".join(x.strip() for x in text.splitlines() if x.strip()) or type(error).__name__
    return line if len(line) <= MAX_MESSAGE else line[:MAX_MESSAGE - 1] + "…"
