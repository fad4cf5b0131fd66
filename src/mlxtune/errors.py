"""The errors a user is meant to read. Anything else is a bug and keeps its traceback."""

from __future__ import annotations


class MlxtuneError(Exception):
    """A problem the user can fix. The CLI prints it as one red line and exits with `exit_code`."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(MlxtuneError):
    """One or more config problems, each `section.key: message`. Usage errors exit 2."""

    exit_code = 2

    def __init__(self, problems: list[str] | str, *, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__("\n".join(prefix + p for p in self.problems))


class DataError(MlxtuneError):
    """Bad input data: the message names the file, line and field."""

    exit_code = 2


class GateFailed(MlxtuneError):
    """An evaluation threshold did not hold (the CI gate)."""

    exit_code = 1
