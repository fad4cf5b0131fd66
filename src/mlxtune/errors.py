"""The errors a user is meant to read. Anything else is a bug and keeps its traceback.

The class alone decides the exit code; no call site overrides it. Exit 1 keeps one meaning per
verb (a failed gate, bad data); exit 2 says the command could not run as asked.
"""

from __future__ import annotations


class MlxtuneError(Exception):
    """A problem the user can fix. The CLI prints it as one red line and exits with `exit_code`."""

    exit_code = 1


class UsageError(MlxtuneError):
    """The command could not run as asked (flags, paths, a missing tool or server): exit 2."""

    exit_code = 2


class ConfigError(UsageError):
    """One or more config problems, each `section.key: message`. Usage errors exit 2."""

    def __init__(self, problems: list[str] | str, *, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__("\n".join(prefix + p for p in self.problems))


class DataError(MlxtuneError):
    """Input data a verb cannot use (train, evaluate): names the file, line and field. Exit 2."""

    exit_code = 2


class BadData(DataError):
    """The data itself has problems (prepare, validate-format): exit 1, nothing written."""

    exit_code = 1


class GateFailed(MlxtuneError):
    """An evaluation threshold did not hold (the CI gate)."""

    exit_code = 1
