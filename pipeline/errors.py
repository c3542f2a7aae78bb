"""User-facing errors.

Anything the user can fix (bad data, bad config, missing weights) raises a ``PipeError`` whose message is
one line naming the file or key and the fix; the CLI prints it without a traceback and exits with code 2.
Programming errors stay ordinary exceptions so their tracebacks are not hidden.
"""


class PipeError(Exception):
    """An error the user can fix; its message is shown as is, on one line."""


class ConfigError(PipeError):
    """A configuration file or override is invalid."""


class DataError(PipeError):
    """The dataset on disk is missing, malformed or inconsistent."""


class WeightsError(PipeError):
    """A model's weights cannot be found, downloaded or verified."""
