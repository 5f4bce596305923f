"""Sessions: traces that run in order on one backend (local hooks or nnsight / NDIF),
activation patching built on them, and probe training inside one session."""

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

__all__ = ["NotRunError", "RemoteError", "Session", "SessionError", "ShapeError", "Trace",
           "Value", "session", "session_model"]
