"""Domain exceptions. Each carries a one-line message that says what is wrong and how to fix it.

The CLI and the ROS nodes print ``str(err)`` and carry on; no traceback for a user mistake.
"""


class PartPointError(Exception):
    """Base class for every error a user can cause and fix."""


class InputError(PartPointError):
    """Bad user input: unreadable image, wrong encoding, empty or huge query."""


class UnknownBackboneError(PartPointError):
    """The backbone id or directory is not a supported MLLM family, or cannot be found."""


class CheckpointError(PartPointError):
    """A head checkpoint is missing, corrupt, or does not match the model or backbone."""


class HeadMismatchError(CheckpointError):
    """A head was trained for another backbone (layers, heads or head size differ)."""


class MissingDependencyError(PartPointError):
    """An optional dependency is not installed; the message names the package to install."""
