"""User-facing errors.

Anything the user can fix (bad data, bad config, missing weights) raises a ``PipeError`` whose message is
one line naming the file or key and the fix; the CLI prints it without a traceback and exits with code 2.
OS errors (permission denied, disk full, ...) reaching the CLI are described the same way
(``describe_os_error``). Programming errors stay ordinary exceptions so their tracebacks are not hidden.
"""

import errno


class PipeError(Exception):
    """An error the user can fix; its message is shown as is, on one line."""


class ConfigError(PipeError):
    """A configuration file or override is invalid."""


class DataError(PipeError):
    """The dataset on disk is missing, malformed or inconsistent."""


class WeightsError(PipeError):
    """A model's weights cannot be found, downloaded or verified."""


_ADVICE = {
    errno.EACCES: "check its permissions, or choose another --out",
    errno.EPERM: "check its permissions, or choose another --out",
    errno.EROFS: "the filesystem is read-only: choose a writable --out",
    errno.ENOSPC: "free some disk space (or use another disk) and run again; nothing half-written was kept",
    errno.EDQUOT: "free some of your disk quota and run again; nothing half-written was kept",
    errno.ELOOP: "a symbolic link leads back to itself: fix or remove the link",
    errno.EISDIR: "a folder stands where a file is expected: rename or remove it",
    errno.ENOTDIR: "a file stands where a folder is expected: rename or remove it",
    errno.ENOENT: "it does not exist: check the path",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.EMFILE: "too many open files: raise the limit (`ulimit -n`) and run again",
    errno.EIO: "the disk reported an I/O error: check it",
    errno.EEXIST: "move it away and run again",
}


def describe_os_error(exc: OSError) -> str:
    """``<path>: <reason>; <what to do>`` for an OS error that reached the command line."""
    reason = (exc.strerror or str(exc)).rstrip(".")
    advice = _ADVICE.get(exc.errno or -1, "fix the cause and run again")
    where = exc.filename if exc.filename is not None else "error"
    if exc.filename2 is not None:
        where = f"{exc.filename} -> {exc.filename2}"
    return f"{where}: {reason[:1].lower() + reason[1:]}; {advice}"
