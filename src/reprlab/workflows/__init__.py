"""Workflows that join two packages (probing and steering, ...).

The packages below (``probes``, ``steering``, ``sessions``, ``drift``) never import one another
to orchestrate: a workflow that uses two of them lives here, above both.
"""

from __future__ import annotations

from reprlab.workflows.probe_validate import probe

__all__ = ["probe"]
