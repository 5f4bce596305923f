"""Preference training: the DPO family with LoRA (and other PEFT tuners), a cached reference,
and evaluation across distribution shifts with a coherence guard.

>>> run = reprlab.prefs.train("toy-sft", "builtin:toy-prefs", method="dpo", out="runs/dpo")
>>> ev = reprlab.prefs.evaluate("runs/dpo")          # accuracy per shift, adapter on and off
>>> print(ev.table())

New methods plug in through :mod:`reprlab.prefs.methods` (see its docstring).
"""

from __future__ import annotations

from typing import Any

__all__ = ["compare", "evaluate", "train"]


def train(*args: Any, **kwargs: Any) -> Any:
    """See :func:`reprlab.prefs.trainer.train`."""
    from reprlab.prefs.trainer import train as _train

    return _train(*args, **kwargs)


def evaluate(*args: Any, **kwargs: Any) -> Any:
    """See :func:`reprlab.prefs.evaluation.evaluate`."""
    from reprlab.prefs.evaluation import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


def compare(*args: Any, **kwargs: Any) -> Any:
    """See :func:`reprlab.prefs.comparison.compare`."""
    from reprlab.prefs.comparison import compare as _compare

    return _compare(*args, **kwargs)
