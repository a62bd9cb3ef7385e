"""Errors a user sees as one line."""


class SpineLabelError(Exception):
    """A problem with the user's input or environment, reported as one readable line.

    Shells catch this, print ``str(error)`` and exit non-zero; anything else is a bug.
    """


class InputError(SpineLabelError):
    """The input is not a usable spine volume (unreadable, wrong dimensionality, bad geometry)."""


class ModelError(SpineLabelError):
    """A bundled or user model is missing, tampered with or incompatible."""


class NoSpineFoundError(SpineLabelError):
    """Detection ran but found no vertebra."""
