"""Exceptions that carry a message a user can act on.

Every error raised for bad input names the offending file or value and says what to do about
it; these classes only let callers (and tests) tell the kinds apart.
"""


class TSKDError(Exception):
    """Base class of the project's own errors."""


class DatasetError(TSKDError, ValueError):
    """A dataset folder, split file, image or cache is missing or malformed."""


class ConfigError(TSKDError, ValueError):
    """A config value has the wrong type or is out of range (the message names key and fix)."""


class CheckpointError(TSKDError, RuntimeError):
    """A checkpoint is unreadable or does not fit the requested model/dataset."""


class InputError(TSKDError, ValueError):
    """An argument given to the API is malformed: an array's shape or values, an option, a
    folder of results, a Trainer without the callbacks the module needs."""


class NonFiniteLossError(TSKDError, FloatingPointError):
    """Training produced a NaN/Inf loss; the message names step, batch ids and loss terms."""


class OutputError(TSKDError, OSError):
    """An output (features, an export, a cache) cannot be written where it was asked for: a
    full disk, a file where a folder should be, a folder without write permission."""


class OutputExistsError(OutputError, FileExistsError):
    """An output file exists and replacing it was not asked for (``--overwrite``)."""


class CheckpointSaveError(CheckpointError, OSError):
    """A checkpoint could not be written (a full disk, a quota); the message names the file
    still intact and the fix. Still an OSError, as the failed write was."""
