"""Errors that reach the user as one clear line.

Every problem a user can fix (bad input, unknown site, corrupt store) raises a subclass of
:class:`ReprlabError`. The CLI prints ``error: <message>`` and exits with code 2, no traceback.
Messages say what was wrong and what to do.
"""

from __future__ import annotations


class ReprlabError(Exception):
    """Base class for user-facing errors."""


class ConfigError(ReprlabError, ValueError):
    """An option or argument has an invalid value."""


class DataError(ReprlabError, ValueError):
    """A dataset is missing, malformed or unsuitable for the requested job."""


class ModelError(ReprlabError):
    """A model cannot be found or loaded."""


class SiteError(ReprlabError, KeyError):
    """A site or position does not exist on this model or in this store."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class StoreError(ReprlabError):
    """An activation store is incomplete, corrupt or does not match the request."""


class TrainingError(ReprlabError):
    """A training run cannot go on (its loss became NaN or infinite)."""
