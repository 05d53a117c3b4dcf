"""The one exception family of cnnctl.

The CLI renders every `CnnctlError` as a short message on stderr and exits with its `exit_code`:
2 for bad input (a config, a file, an argument), 1 for a run that failed.
"""

from __future__ import annotations


class CnnctlError(Exception):
    """Base class: a problem cnnctl can explain to the user in a line or two."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(CnnctlError):
    """An experiment config that cannot be read or is not valid; `problems` holds every located one."""

    def __init__(self, problems: list[str] | str, *, hint: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems), hint=hint)


class ShapeError(ConfigError):
    """A layer stack that cannot be built for its input shape; `index` is the layer's position."""

    def __init__(self, problems: list[str] | str, *, index: int | None = None, hint: str | None = None):
        super().__init__(problems, hint=hint)
        self.index = index


class DataError(CnnctlError):
    """A dataset that is missing, truncated or inconsistent with the config."""


class RuntimeConfigError(CnnctlError):
    """A device, precision or distribution setting this machine cannot honour."""


class RunError(CnnctlError):
    """A run directory that is missing, incomplete, or cannot be written."""


class TrainingFailed(CnnctlError):
    """Training started but did not finish (NaN loss, an error inside fit)."""

    exit_code = 1


class ExportError(CnnctlError):
    """An exported model that could not be written or does not agree with the Keras model."""

    exit_code = 1


class Interrupted(CnnctlError):
    """Training stopped by SIGINT or SIGTERM after writing a resume checkpoint."""

    def __init__(self, message: str, *, run_dir, signal_number: int, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.run_dir = run_dir
        self.exit_code = 128 + signal_number  # 130 for SIGINT, 143 for SIGTERM
