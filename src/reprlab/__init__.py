"""reprlab: find, test and track what language models represent inside."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
