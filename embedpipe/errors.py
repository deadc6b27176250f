"""What can go wrong in the CLI, and the exit code each ends with. Every error is shown as one line.

    CliError                 exit 4: the command could not do what was asked
     +-- ConfigError         a setting is missing or an env file unreadable (the message names the fix)
     +-- JobNotFound         no job with that id
     +-- Unreachable         a service (emulator, Google API, status function) did not answer
     +-- Refused             a service answered no (credentials, permissions)
     +-- NoOutput            the job has no output (yet)
     +-- BadArgument         exit 64: an argument the command cannot use (also click's usage errors)
"""

from __future__ import annotations

__all__ = [
    "EXIT_CANCELLED_OR_FAILED",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "BadArgument",
    "CliError",
    "ConfigError",
    "JobNotFound",
    "NoOutput",
    "Refused",
    "Unreachable",
]

EXIT_OK = 0
EXIT_CANCELLED_OR_FAILED = 1  # watch: a job ended FAILED or CANCELLED
EXIT_PARTIAL = 2  # watch: a job ended PARTIALLY_SUCCEEDED, none failed
EXIT_TIMEOUT = 3  # watch/events: --timeout passed first
EXIT_ERROR = 4
EXIT_USAGE = 64  # sysexits.h EX_USAGE; not click's 2, which `watch` gives to PARTIALLY_SUCCEEDED
EXIT_INTERRUPTED = 130


class CliError(Exception):
    exit_code = EXIT_ERROR

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ConfigError(CliError):
    pass


class JobNotFound(CliError):
    pass


class Unreachable(CliError):
    pass


class Refused(CliError):
    pass


class NoOutput(CliError):
    pass


class BadArgument(CliError):
    exit_code = EXIT_USAGE
