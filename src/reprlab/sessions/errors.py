"""Errors of sessions, owned here so the API and its backends both import them downwards."""

from __future__ import annotations

from reprlab.errors import ReprlabError


class SessionError(ReprlabError, ValueError):
    """A session was used in a way that cannot run (mixed models, bad order...)."""


class ShapeError(SessionError):
    """A value does not fit where it is written."""


class NotRunError(SessionError):
    """A value was read before the trace that makes it ran (or it was not saved)."""


class RemoteError(ReprlabError):
    """A remote (NDIF) session could not be sent, or failed on the server."""


__all__ = ["NotRunError", "RemoteError", "SessionError", "ShapeError"]
