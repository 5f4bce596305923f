"""Fit a tuned lens: the training loop's translators wrapped as a frozen :class:`TunedLens`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import reprlab.distributed as dd
from reprlab.lenses.tuned.lens import TunedLens
from reprlab.lenses.tuned.train import TunedTrainConfig, fit_translators
from reprlab.models import LoadedModel


def train_tuned(lm: LoadedModel, texts: list[str], cfg: TunedTrainConfig | None = None, *,
                state_path: str | Path | None = None, progress: bool = True,
                stop_after: int | None = None, world: dd.World | None = None
                ) -> tuple[TunedLens, list[dict]]:
    """Fit translators on ``texts`` (see :func:`fit_translators`); returns the lens and the
    loss history per step."""
    translators, history, cfg = fit_translators(lm, texts, cfg, state_path=state_path,
                                                progress=progress, stop_after=stop_after,
                                                world=world)
    lens = TunedLens.from_translators(lm, translators, {**asdict(cfg),
                                                        "history_len": len(history)})
    return lens, history
