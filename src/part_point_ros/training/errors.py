"""Errors of the training side; each message is one line that says what is wrong and the fix."""

from part_point_ros.errors import CheckpointError, InputError, PartPointError


class ConfigError(InputError):
    """A training/eval config file or override is invalid; the message names the field."""


class CacheError(PartPointError):
    """A feature cache is missing, incomplete or corrupt."""


class CacheMismatchError(CacheError):
    """A feature cache was made for another backbone / heads / processor / dataset."""


class ResumeError(CheckpointError):
    """A training run cannot be resumed (no checkpoint, or the config changed)."""
