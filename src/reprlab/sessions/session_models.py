"""What a session runs on: any model a user holds, as a reprlab LoadedModel, and prompts
as the tensors a trace feeds it."""

from __future__ import annotations

from typing import Any

import torch

from reprlab.errors import ConfigError


def encode(lm: Any, prompts: Any) -> dict:
    """Tokenize prompts (left padding for causal models) into a dict of tensors."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, dict) or hasattr(prompts, "keys"):
        enc = {k: v for k, v in dict(prompts).items() if isinstance(v, torch.Tensor)}
        if "input_ids" not in enc:
            raise ConfigError("pre-tokenized inputs need input_ids")
        enc.setdefault("attention_mask", torch.ones_like(enc["input_ids"]))
        return {k: v.to(lm.device) for k, v in enc.items()}
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ConfigError("a trace needs one or more non-empty prompt strings")
    return dict(lm.encode(prompts, padding_side="left" if lm.is_causal else None))


def _own_tokenizer(module: Any) -> Any:
    """The tokenizer saved beside a model that was loaded from a local directory (no hub)."""
    from pathlib import Path

    path = getattr(getattr(module, "config", None), "_name_or_path", "") or ""
    if not path or not Path(path).is_dir():
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        return None


def as_session_model(model: Any, tokenizer: Any = None, max_length: int = 512) -> Any:
    """A :class:`~reprlab.models.LoadedModel` for ``model``: a LoadedModel as it is; a Hugging
    Face model already in memory (``nn.Module`` with a ``config``) with ``tokenizer``, else its
    own (``model.tokenizer``, or the one saved in the directory it was loaded from); an nnsight
    ``LanguageModel`` with its module and tokenizer. Anything else is returned unchanged (the
    session then names what it accepts). The module is put in eval mode, as ``load_model``
    does."""
    from reprlab.models import LoadedModel

    if isinstance(model, LoadedModel):
        return model
    envoy = None
    if not isinstance(model, torch.nn.Module):
        inner = getattr(model, "_module", None)  # nnsight's LanguageModel / NNsight envoy
        if not isinstance(inner, torch.nn.Module):
            return model
        envoy, tokenizer = model, tokenizer or getattr(model, "tokenizer", None)
        model = inner
    if getattr(model, "config", None) is None:
        raise ConfigError(f"{type(model).__name__} is not a Hugging Face transformers model (it "
                          "has no config); load it with reprlab.load_model or transformers")
    tok = tokenizer or getattr(model, "tokenizer", None) or _own_tokenizer(model)
    if tok is None:
        raise ConfigError(f"no tokenizer for this {type(model).__name__}; pass one: "
                          "reprlab.session(model, tokenizer=AutoTokenizer.from_pretrained(...))")
    lm = LoadedModel.from_hf(model, tok, max_length=max_length)
    if envoy is not None and type(envoy).__name__ in ("LanguageModel", "TransformersModel"):
        lm.extra["nnsight_remote"] = envoy  # NDIF names the model by this wrapper
    return lm


def session_model(model: Any, remote: bool = False, tokenizer: Any = None,
                  **load_options: Any) -> Any:
    """The model a session runs on. For NDIF (``remote=True``) a hub name becomes a local
    skeleton without weights (config and tokenizer only): the weights stay on the server,
    which matters for a 70B model. Local paths are loaded; loaded models, Hugging Face models
    in memory and nnsight models are wrapped as they are (see :func:`as_session_model`)."""
    from pathlib import Path

    from reprlab.models import as_loaded

    if remote and isinstance(model, str) and not Path(model).exists():
        from reprlab.sessions.nnsight_backend import remote_model

        return remote_model(model)
    if model is not None and not isinstance(model, str):
        return as_session_model(model, tokenizer)
    return as_loaded(model, **load_options)
