"""Errors a user can act on. Each message names the file and says the fix."""


class MonetError(Exception):
    """Base class for errors that the command-line tools report without a traceback."""


class TaskNotFoundError(MonetError):
    """A ``-t`` task specification matched no task folder, or several."""


class DatasetError(MonetError):
    """A task folder, dataset.json or an image in it is unusable as it is."""
