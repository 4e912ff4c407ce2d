"""User-facing errors. Their messages name the file or field at fault and the fix; the CLI prints them
without a traceback."""


class CladError(Exception):
    """Base of every error caused by a bad input (file, config field, suite, task, checkpoint)."""


class ConfigError(CladError, ValueError):
    """A configuration file, field or override is invalid."""


class DataError(CladError, ValueError):
    """A demonstration file or preprocessed dataset is unreadable or malformed."""


class CheckpointError(CladError, ValueError):
    """A checkpoint is missing, unreadable, or does not match the config it is loaded with."""


class ClusterError(CladError, RuntimeError):
    """The Ray cluster could not be started or reached."""
