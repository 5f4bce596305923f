"""Sessions: traces that run in order on one backend (local hooks or nnsight / NDIF),
activation patching built on them, and probe training inside one session."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reprlab._lazy import install

if TYPE_CHECKING:  # the names below load on first use
    from reprlab.sessions.api import (
        NotRunError,
        RemoteError,
        Session,
        SessionError,
        ShapeError,
        Trace,
        Value,
        session,
        session_model,
    )

install(__name__, {
    "NotRunError": "reprlab.sessions.api",
    "RemoteError": "reprlab.sessions.api",
    "Session": "reprlab.sessions.api",
    "SessionError": "reprlab.sessions.api",
    "ShapeError": "reprlab.sessions.api",
    "Trace": "reprlab.sessions.api",
    "Value": "reprlab.sessions.api",
    "session": "reprlab.sessions.api",
    "session_model": "reprlab.sessions.api",
})

__all__ = ["NotRunError", "RemoteError", "Session", "SessionError", "ShapeError", "Trace",
           "Value", "session", "session_model"]
