"""The tuned lens: translators (:mod:`.translators`), the frozen lens (:mod:`.lens`), the
training loop (:mod:`.train`), fitting a lens (:mod:`.fit`) and the per-layer evaluation of
logit and tuned lenses (:mod:`.evaluate`). Imports run one way:
translators <- train <- lens <- fit."""

from __future__ import annotations

from reprlab._lazy import install

_EXPORTS = {
    "TunedLens": "reprlab.lenses.tuned.lens",
    "Translators": "reprlab.lenses.tuned.translators",
    "translate": "reprlab.lenses.tuned.translators",
    "TunedTrainConfig": "reprlab.lenses.tuned.train",
    "fit_translators": "reprlab.lenses.tuned.train",
    "tuned_loss": "reprlab.lenses.tuned.train",
    "train_tuned": "reprlab.lenses.tuned.fit",
    "evaluate_lenses": "reprlab.lenses.tuned.evaluate",
    "encode_batches": "reprlab.lenses.tuned.evaluate",
}

__all__ = list(_EXPORTS)

install(__name__, _EXPORTS)
